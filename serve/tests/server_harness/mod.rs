//! Starting a real dim-serve process on an ephemeral localhost port over a generated image
//! collection, for the API and browser tests.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, Stdio};
use std::time::{Duration, Instant};

/// Images per class in [`write_collection`].
pub const PER_CLASS: usize = 6;
/// The classes of [`write_collection`], one folder each.
pub const CLASSES: [&str; 3] = ["checks", "discs", "stripes"];
/// The file in `stripes/` whose name is not UTF-8.
pub const LATIN1_NAME: &[u8] = b"caf\xe9.png";

/// Writes `CLASSES.len() * PER_CLASS` distinct 28×28 images in class folders: checkerboards,
/// discs and stripes of varying scale. One disc is a transparent RGBA PNG and one stripe image
/// has a Latin-1 file name.
pub fn write_collection(root: &Path) {
    for class in CLASSES {
        std::fs::create_dir_all(root.join(class)).unwrap();
    }
    for index in 0..PER_CLASS {
        let scale = 2 + index as u32;
        let checks = image::GrayImage::from_fn(28, 28, |x, y| {
            image::Luma([if (x / scale + y / scale).is_multiple_of(2) { 230 } else { 20 }])
        });
        checks.save(root.join("checks").join(format!("{index}.png"))).unwrap();
        let radius = 4.0 + 1.7 * index as f32;
        let inside = |x: u32, y: u32| (x as f32 - 13.5).hypot(y as f32 - 13.5) < radius;
        if index == 0 {
            let disc = image::RgbaImage::from_fn(28, 28, |x, y| {
                image::Rgba(if inside(x, y) { [40, 40, 40, 255] } else { [0, 0, 0, 0] })
            });
            disc.save(root.join("discs").join(format!("{index}.png"))).unwrap();
        } else {
            let disc =
                image::GrayImage::from_fn(28, 28, |x, y| image::Luma([if inside(x, y) { 40 } else { 250 }]));
            disc.save(root.join("discs").join(format!("{index}.png"))).unwrap();
        }
        let stripes = image::GrayImage::from_fn(28, 28, |_, y| {
            image::Luma([if (y / scale).is_multiple_of(2) { 200 } else { 60 }])
        });
        let name = if index == 1 {
            OsStr::from_bytes(LATIN1_NAME).to_owned()
        } else {
            format!("{index}.png").into()
        };
        stripes.save(root.join("stripes").join(name)).unwrap();
    }
}

/// A running dim-serve, killed when dropped.
pub struct Server {
    /// `http://127.0.0.1:PORT`.
    pub base_url: String,
    child: Child,
    stderr: Option<ChildStderr>,
}

impl Server {
    /// Starts dim-serve with `args` (plus `--listen 127.0.0.1:0`) and waits for its address.
    pub fn start<I, S>(args: I) -> Server
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut child = Command::new(env!("CARGO_BIN_EXE_dim-serve"))
            .args(args)
            .args(["--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("dim-serve starts");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        let read = BufReader::new(stdout).read_line(&mut line).unwrap();
        if read == 0 {
            let mut errors = String::new();
            child.stderr.take().unwrap().read_to_string(&mut errors).unwrap();
            panic!("dim-serve exited before listening: {errors}");
        }
        let address =
            line.split("listening on ").nth(1).expect("the address line").split_whitespace().next().unwrap();
        Server { base_url: address.trim_end_matches('/').to_string(), stderr: child.stderr.take(), child }
    }

    /// Runs dim-serve with `args` expecting it to refuse to start; returns its stderr.
    pub fn refuse<I, S>(args: I) -> String
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let output = Command::new(env!("CARGO_BIN_EXE_dim-serve"))
            .args(args)
            .args(["--listen", "127.0.0.1:0"])
            .output()
            .unwrap();
        assert!(!output.status.success(), "dim-serve started: {}", String::from_utf8_lossy(&output.stdout));
        String::from_utf8_lossy(&output.stderr).into_owned()
    }

    /// `base_url` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.base_url.rsplit(':').next().unwrap().parse().unwrap()
    }

    /// Sends SIGINT (Ctrl-C) and waits for the exit; returns whether it exited successfully
    /// and what it wrote to stderr.
    pub fn interrupt(mut self) -> (bool, String) {
        let status = Command::new("kill").args(["-INT", &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(20);
        let exit = loop {
            if let Some(exit) = self.child.try_wait().unwrap() {
                break exit;
            }
            assert!(Instant::now() < deadline, "dim-serve did not stop within 20 s of SIGINT");
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut errors = String::new();
        self.stderr.take().unwrap().read_to_string(&mut errors).unwrap();
        (exit.success(), errors)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh temporary directory with a collection in `photos/`; the state goes in `state/`.
pub fn collection_dir() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let photos = dir.path().join("photos");
    write_collection(&photos);
    let state = dir.path().join("state");
    (dir, photos, state)
}
