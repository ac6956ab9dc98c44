//! A real two-node LiteFS cluster for a test (`../shared/litefs/cluster.sh`): n1 the primary,
//! n2 a replica, FUSE mounts, in the test's own `LITEFS_HOME` on a free port pair.
//!
//! Included with `#[path = "support/litefs.rs"] mod litefs;` next to `mod support;`
//! (`real_litefs_cluster.rs`, `convergence_litefs.rs`).
//!
//! Needs `LITEFS_BIN` (the LiteFS binary with `cluster.sh` beside it; `.ci/run` exports it),
//! root, `/dev/fuse` and `fusermount3`: [`Litefs::start`] says which is missing, and the test
//! then prints `SKIP real-litefs: <why>` and passes. Dropping a [`Litefs`] runs
//! `cluster.sh stop`, which stops both nodes and unmounts, also when the test panics; stop
//! the caje processes that use the mounts first (a process with a WAL database open on a
//! mount whose LiteFS dies can get SIGBUS).

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A running LiteFS cluster; dropping it stops both nodes and unmounts.
pub struct Litefs {
    script: PathBuf,
    bin: PathBuf,
    home: Option<tempfile::TempDir>,
    port: u16,
}

impl Litefs {
    /// Starts n1 and n2, or says why this machine cannot.
    pub fn start() -> Result<Litefs, String> {
        let bin = std::env::var_os("LITEFS_BIN").ok_or("LITEFS_BIN not set")?;
        let bin = resolve(Path::new(&bin))
            .ok_or_else(|| format!("LITEFS_BIN={} does not exist", bin.to_string_lossy()))?;
        let script = bin.with_file_name("cluster.sh");
        if !script.is_file() {
            return Err(format!("no cluster.sh beside {}", bin.display()));
        }
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not root (LiteFS mounts FUSE as root)".into());
        }
        if !Path::new("/dev/fuse").exists() {
            return Err("/dev/fuse missing".into());
        }
        let fusermount = Command::new("sh")
            .args(["-c", "command -v fusermount3"])
            .output()
            .map_err(|e| format!("cannot run sh: {e}"))?;
        if !fusermount.status.success() {
            return Err("fusermount3 missing (apt-get install -y fuse3)".into());
        }
        // A free pair of ports can be taken between the probe and LiteFS's bind: try again.
        let mut last = String::new();
        for _ in 0..3 {
            let mut cluster = Litefs {
                script: script.clone(),
                bin: bin.clone(),
                home: Some(tempfile::tempdir().map_err(|e| e.to_string())?),
                port: free_port_pair(),
            };
            let out = cluster.run(&["start"]);
            if out.status.success() {
                return Ok(cluster);
            }
            last = String::from_utf8_lossy(&out.stdout).into_owned();
            cluster.stop();
        }
        panic!("cluster.sh start failed three times (this machine has LiteFS and FUSE, so this is a failure, not a skip):\n{last}");
    }

    pub fn home(&self) -> &Path {
        self.home.as_ref().expect("home lives until drop").path()
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new(&self.script)
            .args(args)
            .env("LITEFS_HOME", self.home())
            .env("LITEFS_BIN", &self.bin)
            .env("LITEFS_PORT", self.port.to_string())
            .output()
            .expect("run cluster.sh")
    }

    /// `cluster.sh stop-node|start-node <node>`, which must succeed.
    pub fn node(&self, action: &str, node: &str) {
        let out = self.run(&[action, node]);
        assert!(
            out.status.success(),
            "cluster.sh {action} {node}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// What `node`'s LiteFS has logged so far.
    pub fn log(&self, node: &str) -> String {
        std::fs::read_to_string(self.home().join("logs").join(format!("{node}.log")))
            .unwrap_or_default()
    }

    /// The database `name` on `node`'s mount (`n1` or `n2`).
    pub fn db(&self, node: &str, name: &str) -> PathBuf {
        self.home().join(node).join("mnt").join(name)
    }

    fn stop(&mut self) {
        let Some(home) = self.home.take() else {
            return;
        };
        // A failed test keeps LiteFS's own logs: what LiteFS did (a halt expired, a node
        // that exited) is half of what a failure on the real cluster means.
        if std::thread::panicking() {
            keep_logs(home.path());
        }
        let out = Command::new(&self.script)
            .arg("stop")
            .env("LITEFS_HOME", home.path())
            .env("LITEFS_BIN", &self.bin)
            .env("LITEFS_PORT", self.port.to_string())
            .output();
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
        let still = mounts
            .lines()
            .any(|l| l.contains(&*home.path().to_string_lossy()));
        if still || !out.as_ref().is_ok_and(|o| o.status.success()) {
            // Removing the folder would descend into a live mount: leave it for inspection.
            let kept = home.keep();
            eprintln!(
                "real-litefs: cluster.sh stop did not finish cleanly ({out:?}); kept {}",
                kept.display()
            );
        }
    }
}

impl Drop for Litefs {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Copies `home/logs` (n1.log, n2.log) to a new temp directory and says where.
fn keep_logs(home: &Path) {
    let Ok(kept) = tempfile::Builder::new().prefix("litefs-logs-").tempdir() else {
        return;
    };
    let kept = kept.keep();
    for node in ["n1", "n2"] {
        let from = home.join("logs").join(format!("{node}.log"));
        let _ = std::fs::copy(&from, kept.join(format!("{node}.log")));
    }
    eprintln!("real-litefs: LiteFS logs kept in {}", kept.display());
}

/// `LITEFS_BIN` as given, or relative to the workspace root (`../shared/litefs/litefs`).
fn resolve(bin: &Path) -> Option<PathBuf> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    [bin.to_path_buf(), workspace.join(bin)]
        .into_iter()
        .find(|p| p.is_file())
        .and_then(|p| p.canonicalize().ok())
}

/// A port `p` such that `p` and `p + 1` were both free a moment ago.
fn free_port_pair() -> u16 {
    loop {
        let a = TcpListener::bind("127.0.0.1:0").unwrap();
        let p = a.local_addr().unwrap().port();
        if p < u16::MAX && TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            return p;
        }
    }
}
