//! The page in a real headless Chromium, driven through chromedriver (WebDriver): upload an image,
//! see its neighbours with the image itself first, click a result to search from it, go back,
//! move between results with the keyboard, try the random button and a narrow screen, and save
//! screenshots into the test's output folder.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`cargo xtask test` installs them); set
//! `CHROMEDRIVER` and `CHROMIUM` to use others.

#[allow(dead_code)] // The harness serves the API tests too; this test uses part of it.
mod server_harness;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use server_harness::{Server, collection_dir};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const K: usize = 6;

/// A chromedriver process on a free port, killed when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    fn start() -> Driver {
        let binary = std::env::var_os("CHROMEDRIVER")
            .map(PathBuf::from)
            .unwrap_or_else(|| "/usr/bin/chromedriver".into());
        assert!(
            binary.exists(),
            "{} is missing: run `cargo xtask test` (it installs Debian's chromium and chromium-driver) \
             or `apt-get install chromium chromium-driver`, or set CHROMEDRIVER",
            binary.display()
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(&binary)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen within 20 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        Driver { child, url: format!("http://127.0.0.1:{port}") }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn browser(driver: &Driver) -> Client {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let capabilities = json!({
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1200,900"],
        },
    });
    let Value::Object(capabilities) = capabilities else { unreachable!("a JSON object") };
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&driver.url)
        .await
        .expect("a browser session starts")
}

/// Waits until `script` (a function body) returns something other than null or false.
async fn wait_for(client: &Client, what: &str, script: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let value = client.execute(script, vec![]).await.unwrap();
        if !(value.is_null() || value == Value::Bool(false)) {
            return value;
        }
        if Instant::now() > deadline {
            let status = client.execute("return document.getElementById('status').textContent", vec![]).await;
            panic!("timed out waiting for {what}; page status: {status:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The grid once it shows `k` results for a query whose label starts with `label`:
/// `[[row, path], ...]`.
async fn grid(client: &Client, label: &str) -> Vec<(u64, String)> {
    let script = format!(
        "const grid = document.getElementById('results');
         if (!grid.dataset.query || !grid.dataset.query.startsWith({label:?}) || grid.children.length !== {K}) return null;
         return [...grid.children].map(item => [Number(item.dataset.row), item.dataset.path]);"
    );
    let value = wait_for(client, &format!("{K} results for {label}"), &script).await;
    serde_json::from_value(value).unwrap()
}

async fn screenshot(client: &Client, folder: &Path, name: &str) {
    let png = client.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    std::fs::write(folder.join(name), png).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_searches_by_upload_and_by_clicking_a_result() {
    let (_dir, photos, state) = collection_dir();
    let server = Server::start([photos.as_os_str(), "--state".as_ref(), state.as_os_str()]);
    let driver = Driver::start();
    let client = browser(&driver).await;
    let output = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dim-serve-browser");
    std::fs::create_dir_all(&output).unwrap();

    client.goto(&server.url(&format!("/?k={K}"))).await.unwrap();
    let summary = wait_for(
        &client,
        "the collection summary",
        "const t = document.getElementById('summary').textContent; return t.includes('images') ? t : null",
    )
    .await;
    assert!(summary.as_str().unwrap().starts_with("18 images"), "{summary}");

    // Upload: the image itself comes first.
    let query = photos.join("discs").join("3.png");
    client.find(Locator::Css("#file")).await.unwrap().send_keys(query.to_str().unwrap()).await.unwrap();
    let uploaded = grid(&client, "upload ").await;
    assert_eq!(uploaded[0].1, "discs/3.png", "{uploaded:?}");
    let upload_url = client.current_url().await.unwrap();
    assert!(upload_url.query().unwrap().contains("image="), "{upload_url}");
    let first_thumbnail_loaded = wait_for(
        &client,
        "the first thumbnail",
        "const img = document.querySelector('#results .result img'); return img.complete && img.naturalWidth > 0",
    )
    .await;
    assert_eq!(first_thumbnail_loaded, Value::Bool(true));
    screenshot(&client, &output, "upload.png").await;

    // Click the second result: the URL and the grid follow it.
    let (clicked_row, _) = uploaded[1].clone();
    client.find_all(Locator::Css("#results .result")).await.unwrap()[1].click().await.unwrap();
    let by_row = grid(&client, &format!("row {clicked_row}")).await;
    assert_eq!(by_row[0].0, clicked_row, "the clicked image leads its own results: {by_row:?}");
    assert_ne!(by_row, uploaded);
    let row_url = client.current_url().await.unwrap();
    assert!(row_url.query().unwrap().contains(&format!("row={clicked_row}")), "{row_url}");
    screenshot(&client, &output, "row.png").await;

    // Back: the upload's search again, from the URL.
    client.back().await.unwrap();
    let back = grid(&client, "upload ").await;
    assert_eq!(back, uploaded);
    assert_eq!(client.current_url().await.unwrap(), upload_url);

    // Keyboard: the arrow key moves the focus to the next result, Enter searches from it.
    client.execute("document.querySelector('#results .result').focus()", vec![]).await.unwrap();
    client.active_element().await.unwrap().send_keys("\u{E014}").await.unwrap();
    let focused = client.execute("return Number(document.activeElement.dataset.row)", vec![]).await.unwrap();
    assert_eq!(focused.as_u64(), Some(uploaded[1].0));
    client.active_element().await.unwrap().send_keys("\u{E007}").await.unwrap();
    let by_keyboard = grid(&client, &format!("row {}", uploaded[1].0)).await;
    assert_eq!(by_keyboard[0].0, uploaded[1].0);

    // Random: some row's search, in the URL.
    // Clicked in the DOM: a pointer click at the button's coordinates can land on a result
    // while the grid above it is still being laid out.
    let shown_before = client
        .execute("return Number(document.getElementById('results').dataset.search)", vec![])
        .await
        .unwrap();
    client.execute("document.getElementById('random').click()", vec![]).await.unwrap();
    // Wait for the random search's own answer (a later search number than the one shown), with
    // the results and the URL (updated one after the other) naming the same row.
    let random_row = wait_for(
        &client,
        "a random search shown and in the URL",
        &format!(
            "const grid = document.getElementById('results');
             const shown = /^row (\\d+)$/.exec(grid.dataset.query || '');
             if (!shown || grid.children.length !== {K} || Number(grid.dataset.search) <= {shown_before}) return null;
             return new URLSearchParams(location.search).get('row') === shown[1] ? Number(shown[1]) : null;"
        ),
    )
    .await
    .as_u64()
    .unwrap();
    let random = grid(&client, &format!("row {random_row}")).await;
    assert_eq!(random[0].0, random_row, "a row's own image comes first");
    let random_url = client.current_url().await.unwrap();
    assert!(random_url.query().unwrap().contains(&format!("row={random_row}")), "{random_url}");

    // A narrow screen: two columns.
    client.set_window_size(390, 844).await.unwrap();
    let columns = wait_for(
        &client,
        "two columns",
        "const tops = [...document.querySelectorAll('#results .result')].slice(0, 3).map(e => e.offsetTop);
         return tops[0] === tops[1] && tops[2] > tops[1] ? 2 : null",
    )
    .await;
    assert_eq!(columns, 2);
    screenshot(&client, &output, "narrow.png").await;

    client.close().await.unwrap();
    for name in ["upload.png", "row.png", "narrow.png"] {
        assert!(std::fs::metadata(output.join(name)).unwrap().len() > 1000, "{name} has content");
    }
}
