//! A throwaway PostgreSQL server with pgvector for the publishing tests: the binaries of PyPI's
//! `pgserver` wheel (PostgreSQL 16, pgvector 0.6; installed in the set-up Python environment), a
//! fresh data directory in a temporary folder, a free localhost port; stopped and removed on drop.
//!
//! PostgreSQL refuses to run as root, so under root (CI) the binaries are copied into the
//! temporary folder and everything runs as the unprivileged user `nobody` (uid/gid 65534).

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const UNPRIVILEGED_ID: u32 = 65534;

/// A running server; [`PostgresServer::url`] connects as the superuser `postgres`.
pub struct PostgresServer {
    bin: PathBuf,
    data: PathBuf,
    run_as: Option<u32>,
    port: u16,
    server: Child,
    // Last: removed after the server has stopped.
    _dir: tempfile::TempDir,
}

impl PostgresServer {
    /// Starts a server from the pgserver install that `python` imports.
    pub fn start(python: &Path) -> Self {
        let located = Command::new(python)
            .args([
                "-c",
                "import os, pgserver; print(os.path.join(os.path.dirname(pgserver.__file__), 'pginstall'))",
            ])
            .output()
            .expect("the configured Python runs");
        assert!(
            located.status.success(),
            "pgserver is missing from the Python environment (rerun `cargo xtask setup`): {}",
            String::from_utf8_lossy(&located.stderr)
        );
        let install = PathBuf::from(String::from_utf8_lossy(&located.stdout).trim());
        let dir = tempfile::tempdir().unwrap();
        let as_root = std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false);
        let (install, run_as) = if as_root {
            // The binaries find their libraries at $ORIGIN/../../../pgserver.libs (auditwheel's
            // folder beside the package), so the copy keeps that layout.
            let site = dir.path().join("site");
            std::fs::create_dir_all(site.join("pgserver")).unwrap();
            let site_packages = install.parent().unwrap().parent().unwrap();
            let mut copies = vec![(install.clone(), site.join("pgserver"))];
            for entry in std::fs::read_dir(site_packages).unwrap() {
                let name = entry.unwrap().file_name().to_string_lossy().into_owned();
                if name.starts_with("pgserver") && name.ends_with(".libs") {
                    copies.push((site_packages.join(name), site.clone()));
                }
            }
            for (from, into) in copies {
                run(Command::new("cp").arg("-a").arg(from).arg(into), "copying the PostgreSQL binaries");
            }
            (site.join("pgserver").join("pginstall"), Some(UNPRIVILEGED_ID))
        } else {
            (install, None)
        };
        let data = dir.path().join("data");
        if run_as.is_some() {
            run(
                Command::new("chown")
                    .arg("-R")
                    .arg(format!("{UNPRIVILEGED_ID}:{UNPRIVILEGED_ID}"))
                    .arg(dir.path()),
                "handing the folder to nobody",
            );
        }
        let bin = install.join("bin");
        let command = |program: &str| {
            let mut command = Command::new(bin.join(program));
            command.env("LC_ALL", "C").env_remove("PGDATA");
            if let Some(id) = run_as {
                command.uid(id).gid(id);
            }
            command
        };
        run(
            command("initdb").arg("-D").arg(&data).args([
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ]),
            "initdb",
        );
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
        if let Some(id) = run_as {
            std::os::unix::fs::chown(dir.path().join("server.log"), Some(id), Some(id)).unwrap();
        }
        let server = command("postgres")
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-k"])
            .arg(&data)
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("postgres starts");
        let started = PostgresServer { bin, data, run_as, port, server, _dir: dir };
        started.wait_until_ready();
        started
    }

    /// The connection URL (superuser `postgres`, database `postgres`).
    pub fn url(&self) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// What the server has logged so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data.parent().unwrap().join("server.log")).unwrap_or_default()
    }

    fn wait_until_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match postgres::Client::connect(&self.url(), postgres::NoTls) {
                Ok(_) => return,
                Err(error) if Instant::now() > deadline => {
                    panic!("PostgreSQL did not accept connections within 60 s: {error}\n{}", self.log());
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        let mut stop = Command::new(self.bin.join("pg_ctl"));
        stop.arg("stop").arg("-D").arg(&self.data).args(["-m", "immediate", "-w"]).stdout(Stdio::null());
        if let Some(id) = self.run_as {
            stop.uid(id).gid(id);
        }
        if !stop.status().is_ok_and(|status| status.success()) {
            let _ = self.server.kill();
        }
        let _ = self.server.wait();
    }
}

fn run(command: &mut Command, what: &str) {
    let output = command.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        output.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}
