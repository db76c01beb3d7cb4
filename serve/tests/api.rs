//! The JSON API against a real dim-serve on an ephemeral localhost port: every endpoint, every
//! client error, path traversal attempts, token enforcement, incremental restarts, the model
//! check at start and graceful shutdown.

mod server_harness;

use serde_json::Value;
use server_harness::{CLASSES, LATIN1_NAME, PER_CLASS, Server, collection_dir};
use std::io::{Read, Write};
use std::net::TcpStream;

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).build().into()
}

/// Status and JSON body of a response.
fn json_of(response: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> (u16, Value) {
    let mut response = response.expect("the request completes");
    let status = response.status().as_u16();
    let body = response.body_mut().read_to_vec().unwrap();
    let value = serde_json::from_slice(&body).unwrap_or_else(|e| {
        panic!("status {status}: body is not JSON ({e}): {}", String::from_utf8_lossy(&body))
    });
    (status, value)
}

fn assert_error(response: Result<ureq::http::Response<ureq::Body>, ureq::Error>, status: u16, needle: &str) {
    let (got, body) = json_of(response);
    assert_eq!(got, status, "{body}");
    assert_eq!(body["status"], status, "{body}");
    let message = body["error"].as_str().expect("an error message");
    assert!(message.contains(needle), "{message:?} lacks {needle:?}");
}

/// Sends `target` verbatim as the request line's path, so no client normalises it.
fn raw_get(port: u16, target: &str) -> (u16, String) {
    raw_request(port, &format!("GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"))
}

/// Sends `request` as it is and reads the whole answer.
fn raw_request(port: u16, request: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, response)
}

fn multipart(field: &str, bytes: &[u8]) -> (String, Vec<u8>) {
    let boundary = "dimservetestboundary7d1";
    let mut body = Vec::new();
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"q.png\"\r\nContent-Type: image/png\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(bytes);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

fn row_of(body: &Value, path: &str) -> u64 {
    body["results"].as_array().unwrap().iter().find(|hit| hit["path"] == path).unwrap()["row"]
        .as_u64()
        .unwrap()
}

#[test]
fn every_endpoint_answers_and_every_client_error_is_json() {
    let (_dir, photos, state) = collection_dir();
    let server = Server::start([
        photos.as_os_str(),
        "--state".as_ref(),
        state.as_os_str(),
        "--max-upload-bytes".as_ref(),
        "100000".as_ref(),
    ]);
    let http = agent();
    let total = CLASSES.len() * PER_CLASS;

    let (status, health) = json_of(http.get(server.url("/api/health")).call());
    assert_eq!(
        (status, health["status"].as_str(), health["rows"].as_u64()),
        (200, Some("ok"), Some(total as u64))
    );

    let (status, summary) = json_of(http.get(server.url("/api/collection")).call());
    assert_eq!(status, 200);
    assert_eq!(summary["count"], total);
    assert_eq!(summary["metric"], "cosine");
    assert_eq!(summary["model"]["feature"], "embedding");
    assert_eq!(summary["model"]["checkpoint_sha256"].as_str().unwrap().len(), 64);
    assert_eq!(summary["index"]["m"], 16);
    assert_eq!(summary["root"]["path"], photos.to_str().unwrap());

    // Upload, raw body: the image itself comes first, with its path relative to the root.
    let query_png = std::fs::read(photos.join("checks/3.png")).unwrap();
    let (status, by_upload) = json_of(
        http.post(server.url("/api/search/image?k=5")).content_type("image/png").send(&query_png[..]),
    );
    assert_eq!(status, 200, "{by_upload}");
    let results = by_upload["results"].as_array().unwrap();
    assert_eq!(results.len(), 5);
    assert_eq!(results[0]["path"], "checks/3.png");
    assert_eq!(results[0]["rank"], 1);
    assert!((results[0]["score"].as_f64().unwrap() - 1.0).abs() < 1e-4, "{}", results[0]);
    let query_row = results[0]["row"].as_u64().unwrap();
    assert_eq!(results[0]["thumbnail"], format!("/thumbnails/{query_row}"));
    assert_eq!(by_upload["k"], 5);
    assert_eq!(by_upload["query"]["kind"], "image");
    assert_eq!(
        (by_upload["query"]["width"].as_u64(), by_upload["query"]["height"].as_u64()),
        (Some(28), Some(28))
    );

    // The same upload as multipart, and again by its id: the same neighbours.
    let (content_type, body) = multipart("image", &query_png);
    let (status, by_multipart) =
        json_of(http.post(server.url("/api/search/image?k=5")).content_type(&content_type).send(&body[..]));
    assert_eq!(status, 200, "{by_multipart}");
    assert_eq!(by_multipart["results"], by_upload["results"]);
    let id = by_upload["query"]["id"].as_str().unwrap();
    let (status, remembered) = json_of(http.get(server.url(&format!("/api/search/image/{id}?k=5"))).call());
    assert_eq!(status, 200);
    assert_eq!(remembered["results"], by_upload["results"]);

    // By row: the row itself first; `ef` is raised to at least `k`.
    let (status, by_row) =
        json_of(http.get(server.url(&format!("/api/search/row/{query_row}?k=7&ef=2"))).call());
    assert_eq!(status, 200);
    assert_eq!(by_row["results"].as_array().unwrap().len(), 7);
    assert_eq!(by_row["results"][0]["row"], query_row);
    assert_eq!((by_row["k"].as_u64(), by_row["ef"].as_u64()), (Some(7), Some(7)));
    assert_eq!(by_row["query"], serde_json::json!({"kind": "row", "row": query_row}));

    // By vector: the stored vector of the row finds the row.
    let vectors = dim_vectors::npy::read_matrix(&state.join("embeddings/embeddings.npy")).unwrap();
    let vector = vectors.row(query_row as usize).to_vec();
    let (status, by_vector) = json_of(
        http.post(server.url("/api/search/vector")).send_json(serde_json::json!({"vector": vector, "k": 3})),
    );
    assert_eq!(status, 200, "{by_vector}");
    assert_eq!(by_vector["results"][0]["row"], query_row);
    assert_eq!(by_vector["results"].as_array().unwrap().len(), 3);

    // A name that is not UTF-8 keeps its bytes.
    let (_, everything) =
        json_of(http.get(server.url(&format!("/api/search/row/{query_row}?k={total}"))).call());
    let latin1 = everything["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|hit| hit["path_bytes_hex"].is_string())
        .expect("the Latin-1 name is among the results");
    let hex: String =
        [b"stripes/".as_slice(), LATIN1_NAME].concat().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(latin1["path_bytes_hex"], hex);
    assert_eq!(latin1["path"], "stripes/caf\\xe9.png");

    // Random: an indexed row.
    let (status, random) = json_of(http.get(server.url("/api/random")).call());
    assert_eq!(status, 200);
    assert!(random["row"].as_u64().unwrap() < total as u64);

    // Thumbnails: bounded JPEG, cache headers, 304 on a matching tag.
    let mut thumbnail = http.get(server.url(&format!("/thumbnails/{query_row}?size=20"))).call().unwrap();
    assert_eq!(thumbnail.status(), 200);
    assert_eq!(thumbnail.headers()["content-type"], "image/jpeg");
    assert!(thumbnail.headers()["cache-control"].to_str().unwrap().contains("max-age"));
    let etag = thumbnail.headers()["etag"].to_str().unwrap().to_string();
    let jpeg = thumbnail.body_mut().read_to_vec().unwrap();
    let decoded = image::load_from_memory(&jpeg).unwrap();
    assert_eq!((decoded.width(), decoded.height()), (20, 20));
    let again = http
        .get(server.url(&format!("/thumbnails/{query_row}?size=20")))
        .header("If-None-Match", &etag)
        .call()
        .unwrap();
    assert_eq!(again.status(), 304);
    let transparent_row = row_of(&everything, "discs/0.png");
    let mut transparent = http.get(server.url(&format!("/thumbnails/{transparent_row}"))).call().unwrap();
    let decoded = image::load_from_memory(&transparent.body_mut().read_to_vec().unwrap()).unwrap().to_rgb8();
    assert!(decoded.get_pixel(0, 0).0.iter().all(|&c| c > 240), "transparent corners show white");

    // Client errors.
    let not_png = b"this is not an image";
    assert_error(http.post(server.url("/api/search/image")).send(&not_png[..]), 400, "not an image");
    assert_error(http.post(server.url("/api/search/image")).send(&[][..]), 400, "empty");
    // Too large: refused from the declared length, before the body is sent (as curl sends
    // large uploads, with `Expect: 100-continue`).
    for content_type in ["image/png", "multipart/form-data; boundary=x"] {
        let (status, response) = raw_request(
            server.port(),
            &format!(
                "POST /api/search/image HTTP/1.1\r\nHost: localhost\r\nContent-Type: {content_type}\r\n\
                 Content-Length: 200000\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n"
            ),
        );
        assert_eq!(status, 413, "{response}");
        assert!(response.contains("100000-byte limit"), "{response}");
    }
    let (content_type, body) = multipart("other", b"x");
    let (status, _) =
        json_of(http.post(server.url("/api/search/image")).content_type(&content_type).send(&body[..]));
    assert_eq!(status, 400);
    assert_error(http.get(server.url(&format!("/api/search/row/{total}"))).call(), 404, "unknown row");
    assert_error(http.get(server.url("/api/search/row/-1")).call(), 400, "whole number");
    assert_error(http.get(server.url("/thumbnails/999999")).call(), 404, "unknown row");
    for bad_k in ["0", "abc", "1001", &(total + 1).to_string()] {
        assert_error(http.get(server.url(&format!("/api/search/row/0?k={bad_k}"))).call(), 400, "k must be");
    }
    assert_error(http.get(server.url("/api/search/row/0?ef=0")).call(), 400, "ef must be");
    assert_error(http.get(server.url("/thumbnails/0?size=9999")).call(), 400, "size must be");
    assert_error(
        http.post(server.url("/api/search/vector")).send_json(serde_json::json!({"vector": [1.0, 2.0]})),
        400,
        "has 2 values",
    );
    assert_error(http.post(server.url("/api/search/vector")).send(&b"{not json"[..]), 400, "must be JSON");
    assert_error(
        http.get(server.url("/api/search/image/0123456789abcdef")).call(),
        404,
        "upload the image again",
    );
    assert_error(http.get(server.url("/api/nothing-here")).call(), 404, "no such endpoint");
    assert_error(http.delete(server.url("/api/health")).call(), 405, "does not take DELETE");

    // Path traversal in any spelling reaches no file: every answer is a JSON error.
    for target in [
        "/thumbnails/../../../../etc/passwd",
        "/thumbnails/..%2F..%2F..%2Fetc%2Fpasswd",
        "/thumbnails/%2Fetc%2Fpasswd",
        "/thumbnails/0/../../../etc/passwd",
        "/../../../../etc/passwd",
        "/%2e%2e/%2e%2e/etc/passwd",
        "//etc/passwd",
        "/thumbnails/%2e%2e%2f%2e%2e%2fCargo.toml",
        "/api/search/row/..%2f0",
    ] {
        let (status, response) = raw_get(server.port(), target);
        assert!((400..500).contains(&status), "{target}: {response}");
        assert!(!response.contains("root:"), "{target}: {response}");
        assert!(response.contains("\"error\""), "{target}: {response}");
    }

    // The page, with no external assets.
    let mut page = http.get(server.url("/")).call().unwrap();
    assert_eq!(page.status(), 200);
    let html = page.body_mut().read_to_string().unwrap();
    assert!(html.contains("id=\"results\""));
    assert!(!html.contains("http://") && !html.contains("https://"), "the page loads nothing from elsewhere");

    let (clean, stderr) = server.interrupt();
    assert!(clean, "dim-serve exits 0 on Ctrl-C: {stderr}");
    assert!(stderr.contains("shutting down") && stderr.contains("stopped"), "{stderr}");
}

#[test]
fn a_token_is_required_on_every_request_and_a_restart_embeds_only_new_images() {
    let (_dir, photos, state) = collection_dir();
    let args = |token: &str| {
        vec![
            photos.clone().into_os_string(),
            "--state".into(),
            state.clone().into_os_string(),
            "--token".into(),
            token.into(),
        ]
    };
    let server = Server::start(args("s3cret"));
    let http = agent();
    for path in ["/api/health", "/api/collection", "/", "/thumbnails/0", "/api/search/row/0", "/no-such-page"]
    {
        assert_error(http.get(server.url(path)).call(), 401, "token");
        assert_error(
            http.get(server.url(path)).header("Authorization", "Bearer wrong").call(),
            401,
            "wrong token",
        );
    }
    assert_error(http.post(server.url("/api/search/vector")).send(&b"{}"[..]), 401, "token");
    let (status, _) =
        json_of(http.get(server.url("/api/health")).header("Authorization", "Bearer s3cret").call());
    assert_eq!(status, 200);
    let (status, _) = json_of(http.get(server.url("/api/search/row/0?k=2&token=s3cret")).call());
    assert_eq!(status, 200);
    let (clean, first_log) = server.interrupt();
    assert!(clean, "{first_log}");
    let total = CLASSES.len() * PER_CLASS;
    assert!(first_log.contains(&format!("embedded {total} new images, kept 0")), "{first_log}");

    // One new image: only it is embedded, and the index is rebuilt to include it.
    image::GrayImage::from_fn(28, 28, |x, _| image::Luma([(x * 9) as u8]))
        .save(photos.join("checks/new.png"))
        .unwrap();
    let server = Server::start(args("another"));
    let (_, summary) =
        json_of(http.get(server.url("/api/collection")).header("Authorization", "Bearer another").call());
    assert_eq!(summary["count"], total + 1);
    let (_, second_log) = server.interrupt();
    assert!(second_log.contains(&format!("embedded 1 new images, kept {total}")), "{second_log}");
    assert!(second_log.contains("index built"), "{second_log}");

    // Nothing new: nothing embedded, the index kept.
    let server = Server::start(args("third"));
    let (_, third_log) = server.interrupt();
    assert!(third_log.contains(&format!("embedded 0 new images, kept {}", total + 1)), "{third_log}");
    assert!(third_log.contains("index unchanged"), "{third_log}");
}

#[test]
fn an_index_from_another_model_is_refused_at_start() {
    let (_dir, photos, state) = collection_dir();
    let server = Server::start([photos.as_os_str(), "--state".as_ref(), state.as_os_str()]);
    drop(server);
    let index = state.join("index");
    let info_path = index.join("index.json");
    let mut info: Value = serde_json::from_slice(&std::fs::read(&info_path).unwrap()).unwrap();
    info["model"]["checkpoint_sha256"] = Value::String("0".repeat(64));
    std::fs::write(&info_path, serde_json::to_vec(&info).unwrap()).unwrap();
    let stderr = Server::refuse(["--index".as_ref(), index.as_os_str()]);
    assert!(stderr.contains("is not the model the index"), "{stderr}");
    assert!(stderr.contains("--model"), "{stderr}");

    let missing = Server::refuse(["--index", "/nonexistent/index"]);
    assert!(missing.contains("is this a dim-search index"), "{missing}");
    let empty = tempfile::tempdir().unwrap();
    let nothing =
        Server::refuse([empty.path().as_os_str(), "--state".as_ref(), state.join("other").as_os_str()]);
    assert!(nothing.contains("no images found"), "{nothing}");
}
