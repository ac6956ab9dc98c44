//! Test harness: real `caje` and `slow_server` processes on port 0, a small HTTP client, and
//! file-system helpers. Every integration test file does `mod support;`.
//!
//! # How the binaries are found
//! - `caje`: `env!("CARGO_BIN_EXE_caje")`, built by `cargo test -p caje` itself.
//! - `slow_server`: `cargo test -p caje` does not build other packages' binaries, and a
//!   binary-only crate cannot be a dev-dependency. So the first test in each test process runs
//!   `cargo build -p slow_server --bin slow_server` once (guarded by a `OnceLock`) with the same
//!   profile and target directory as the caje binary (both derived from `CARGO_BIN_EXE_caje`:
//!   `<target-dir>/<profile-dir>/caje`). The build is skipped when the binary is newer than
//!   every file under `slow_server/` and the workspace `Cargo.toml`/`Cargo.lock`, so tests do
//!   not queue behind another build's lock on the target dir. Set `SLOW_SERVER_BIN=/path/to/slow_server` to skip the build (e.g. when
//!   cross-compiling, where the profile directory is `<target-dir>/<triple>/<profile>`).
//!
//! # Processes
//! Children are started with `--listen 127.0.0.1:0`; the harness reads the one
//! `... listening on http://IP:PORT` line from stdout (20 s deadline; on failure the panic
//! includes the child's stderr, which always goes to a file in the node's temp dir). On `Drop`
//! a child gets SIGTERM, a short grace period, then SIGKILL.
//!
//! # Layout of a caje node's temp dir ([`NodeDir`])
//! ```text
//! <tmp>/caje.toml         config written by the harness
//! <tmp>/manifest.db       --db (plus SQLite's -wal/-shm/-journal)
//! <tmp>/d1/d2/d3/d4/cache --cache-dir: deep on purpose, so a `../..` escape lands inside <tmp>
//! <tmp>/cwd/              the child's working directory (must stay empty)
//! <tmp>/caje-N.stderr     stderr of the N-th process started in this dir
//! ```

#![allow(dead_code)]

pub mod http;

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

pub use self::http::{get, post, request, Resp};

/// The `Host` that [`Caje::get_site`] sends.
pub const SITE_HOST: &str = "caje.test";

/// How long a child may take to print its "listening on" line.
const START_DEADLINE: Duration = Duration::from_secs(20);
/// How long a child gets after SIGTERM in `Drop` before SIGKILL.
const DROP_GRACE: Duration = Duration::from_secs(3);

/// Runs `fut`, panicking if it takes longer than `secs` seconds. Every test body goes through
/// this so that a hung proxy fails the test instead of hanging the run.
pub async fn within<F: Future>(secs: u64, fut: F) -> F::Output {
    match tokio::time::timeout(Duration::from_secs(secs), fut).await {
        Ok(out) => out,
        Err(_) => panic!("test did not finish within {secs} s"),
    }
}

/// Polls `cond` every 20 ms until it is true; panics with `what` after `secs` seconds.
pub async fn eventually<F, Fut>(secs: u64, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond().await {
        assert!(
            Instant::now() < deadline,
            "condition not reached within {secs} s: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Binaries
// ---------------------------------------------------------------------------------------------

/// The caje binary under test.
pub fn caje_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_caje"))
}

/// The slow_server binary, built once per test process (see the module docs).
pub fn slow_server_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("SLOW_SERVER_BIN") {
            return PathBuf::from(p);
        }
        let caje = caje_bin();
        let profile_dir = caje.parent().expect("caje binary has a directory");
        let bin = profile_dir.join("slow_server");
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("caje/ is inside the workspace");
        if is_up_to_date(&bin, workspace) {
            return bin;
        }
        let target_dir = profile_dir.parent().expect("profile dir has a parent");
        let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") => "dev".to_owned(),
            Some(other) => other.to_owned(),
            None => panic!("cannot tell the profile from {}", caje.display()),
        };
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
        let out = Command::new(&cargo)
            .args([
                "build",
                "--quiet",
                "-p",
                "slow_server",
                "--bin",
                "slow_server",
            ])
            .arg("--profile")
            .arg(&profile)
            .arg("--target-dir")
            .arg(target_dir)
            .current_dir(workspace)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {cargo:?} build -p slow_server: {e}"));
        assert!(
            out.status.success(),
            "cargo build -p slow_server --profile {profile} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(bin.exists(), "{} was not built", bin.display());
        bin
    })
    .clone()
}

/// Whether `bin` is newer than every input of slow_server's build we can cheaply see
/// (`slow_server/`'s files, the workspace `Cargo.toml` and `Cargo.lock`). Skipping cargo then
/// avoids waiting on the target dir's lock while another build runs. A stale dependency that
/// is not listed here is caught by the next `cargo build`.
fn is_up_to_date(bin: &Path, workspace: &Path) -> bool {
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let Some(built) = mtime(bin) else {
        return false;
    };
    let mut inputs = files_under(&workspace.join("slow_server"));
    inputs.push(workspace.join("Cargo.toml"));
    inputs.push(workspace.join("Cargo.lock"));
    inputs.iter().all(|p| mtime(p).is_some_and(|m| m <= built))
}

// ---------------------------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------------------------

/// A running child that printed `<prefix> listening on http://ADDR`.
struct Proc {
    child: Child,
    addr: SocketAddr,
    stderr_path: PathBuf,
    exit: Option<ExitStatus>,
}

impl Proc {
    fn spawn(mut cmd: Command, prefix: &str, stderr_path: PathBuf) -> Proc {
        let stderr = std::fs::File::create(&stderr_path)
            .unwrap_or_else(|e| panic!("creating {}: {e}", stderr_path.display()));
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr));
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel();
        let want = format!("{prefix} listening on http://");
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let mut sent = false;
            // Keep draining after the line so the child can never block on a full pipe.
            for line in lines.by_ref() {
                let Ok(line) = line else { break };
                if !sent {
                    let _ = tx.send(line);
                    sent = true;
                }
            }
        });
        let line = rx.recv_timeout(START_DEADLINE);
        let mut proc = Proc {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            stderr_path,
            exit: None,
        };
        let addr = match &line {
            Ok(l) => l
                .strip_prefix(&want)
                .and_then(|rest| rest.trim().trim_end_matches('/').parse().ok()),
            Err(_) => None,
        };
        match addr {
            Some(addr) => {
                proc.addr = addr;
                proc
            }
            None => {
                let exited = proc.wait_for(Duration::from_millis(200));
                proc.kill();
                panic!(
                    "{cmd:?} did not print `{want}IP:PORT` within {START_DEADLINE:?} \
                     (first stdout line: {line:?}, exit status: {exited:?}); stderr:\n{}",
                    proc.stderr()
                );
            }
        }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    fn signal(&self, sig: i32) {
        // SAFETY: plain syscall on our own child's pid; the child is not reaped yet (we hold
        // `Child` and only reap through it), so the pid cannot have been reused.
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    /// Waits for the child to exit, up to `limit`.
    fn wait_for(&mut self, limit: Duration) -> Option<ExitStatus> {
        if let Some(st) = self.exit {
            return Some(st);
        }
        let deadline = Instant::now() + limit;
        loop {
            match self.child.try_wait() {
                Ok(Some(st)) => {
                    self.exit = Some(st);
                    return Some(st);
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => return None,
            }
        }
    }

    fn kill(&mut self) {
        if self.exit.is_none() {
            let _ = self.child.kill();
            self.exit = self.child.wait().ok();
        }
    }

    /// SIGTERM, then wait up to `limit`; panics (after SIGKILL) if it does not exit.
    fn terminate(&mut self, limit: Duration) -> ExitStatus {
        if let Some(st) = self.exit {
            return st;
        }
        self.signal(libc::SIGTERM);
        match self.wait_for(limit) {
            Some(st) => st,
            None => {
                self.kill();
                panic!(
                    "process did not exit within {limit:?} of SIGTERM; stderr:\n{}",
                    self.stderr()
                );
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.exit.is_some() {
            return;
        }
        self.signal(libc::SIGTERM);
        if self.wait_for(DROP_GRACE).is_none() {
            self.kill();
        }
    }
}

/// A fresh temp dir for one helper process.
fn temp_dir(prefix: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("creating a temp dir")
}

// ---------------------------------------------------------------------------------------------
// slow_server
// ---------------------------------------------------------------------------------------------

/// A running slow_server.
pub struct Origin {
    proc: Proc,
    _dir: TempDir,
}

impl Origin {
    /// Starts slow_server with default delays.
    pub fn start() -> Origin {
        Origin::start_with(&[])
    }

    /// Starts slow_server with extra flags (e.g. `["--delay-scale", "0.1"]`).
    pub fn start_with(args: &[&str]) -> Origin {
        let dir = temp_dir("slow_server-");
        let mut cmd = Command::new(slow_server_bin());
        cmd.args(["--listen", "127.0.0.1:0"]).args(args);
        cmd.current_dir(dir.path());
        let proc = Proc::spawn(cmd, "slow_server", dir.path().join("slow_server.stderr"));
        Origin { proc, _dir: dir }
    }

    pub fn addr(&self) -> SocketAddr {
        self.proc.addr
    }

    /// `http://IP:PORT`
    pub fn base(&self) -> String {
        format!("http://{}", self.proc.addr)
    }

    /// `http://IP:PORT<path>`
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.proc.addr)
    }

    pub fn stderr(&self) -> String {
        self.proc.stderr()
    }

    /// Sends SIGTERM and waits (up to 10 s) for the exit: from here on nothing answers at the
    /// origin's address, so only a cache can serve (and the stats helpers panic).
    pub fn stop(&mut self) -> ExitStatus {
        self.proc.terminate(Duration::from_secs(10))
    }

    /// `GET /_origin/stats`
    pub async fn stats(&self) -> Value {
        let r = get(&self.url("/_origin/stats"), &[]).await;
        assert_eq!(r.status, 200, "origin stats: {}", r.text());
        r.json()
    }

    /// Total requests the origin has seen (slow_server does not count its own `/_origin/*`).
    pub async fn total(&self) -> u64 {
        self.stats().await["total"].as_u64().unwrap_or(0)
    }

    /// Requests the origin saw for `path` (without query).
    pub async fn requests(&self, path: &str) -> u64 {
        self.path_stat(path, "requests").await
    }

    /// One counter of `paths[path]` (0 when the path was never requested).
    pub async fn path_stat(&self, path: &str, counter: &str) -> u64 {
        self.stats().await["paths"][path][counter]
            .as_u64()
            .unwrap_or(0)
    }

    /// The request headers (lower-case names) of the last request for `path`.
    pub async fn last_headers(&self, path: &str) -> serde_json::Map<String, Value> {
        let stats = self.stats().await;
        stats["paths"][path]["last_headers"]
            .as_object()
            .cloned()
            .unwrap_or_else(|| panic!("origin has no last_headers for {path}: {stats}"))
    }

    /// `POST /_origin/bump?path=<path>`
    pub async fn bump(&self, path: &str) {
        let r = post(&self.url(&format!("/_origin/bump?path={path}")), &[]).await;
        assert!(
            (200..300).contains(&r.status),
            "bump {path}: {} {}",
            r.status,
            r.text()
        );
    }

    /// `POST /_origin/reset`
    pub async fn reset(&self) {
        let r = post(&self.url("/_origin/reset"), &[]).await;
        assert!((200..300).contains(&r.status), "reset: {}", r.status);
    }
}

// ---------------------------------------------------------------------------------------------
// caje
// ---------------------------------------------------------------------------------------------

/// The temp dir of one caje node; outlives the processes started in it (restarts).
pub struct NodeDir {
    tmp: TempDir,
    started: AtomicUsize,
}

impl NodeDir {
    pub fn new() -> Arc<NodeDir> {
        NodeDir::with(temp_dir("caje-node-"))
    }

    /// A node dir under `base` (e.g. `/dev/shm`, for a cache on a memory file system).
    #[allow(dead_code)]
    pub fn new_in(base: &Path) -> Arc<NodeDir> {
        let tmp = tempfile::Builder::new()
            .prefix("caje-node-")
            .tempdir_in(base)
            .expect("creating a temp dir");
        NodeDir::with(tmp)
    }

    fn with(tmp: TempDir) -> Arc<NodeDir> {
        std::fs::create_dir_all(tmp.path().join("cwd")).expect("creating cwd");
        Arc::new(NodeDir {
            tmp,
            started: AtomicUsize::new(0),
        })
    }

    pub fn root(&self) -> &Path {
        self.tmp.path()
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.root().join("d1/d2/d3/d4/cache")
    }

    pub fn db(&self) -> PathBuf {
        self.root().join("manifest.db")
    }

    pub fn config_path(&self) -> PathBuf {
        self.root().join("caje.toml")
    }

    pub fn cwd(&self) -> PathBuf {
        self.root().join("cwd")
    }

    /// Whether `path` is one of the files the harness itself creates in the root.
    pub fn is_harness_file(&self, path: &Path) -> bool {
        let Ok(rel) = path.strip_prefix(self.root()) else {
            return false;
        };
        let name = rel.to_string_lossy();
        name == "caje.toml" || (name.starts_with("caje-") && name.ends_with(".stderr"))
    }

    /// Whether `path` is the manifest or one of SQLite's companion files.
    pub fn is_db_file(&self, path: &Path) -> bool {
        let db = self.db();
        let db = db.to_string_lossy();
        let p = path.to_string_lossy();
        p == db || (p.starts_with(db.as_ref()) && p[db.len()..].starts_with('-'))
    }
}

/// How to start caje.
#[derive(Debug, Clone, Default)]
pub struct CajeConfig {
    /// `(host, url)` `[[origins]]` tables.
    pub origins: Vec<(String, String)>,
    /// TOML appended after the origins (use tables: `[cache]\nmax_object_bytes = 10`).
    pub extra: String,
    /// `--db` instead of the node dir's own (shared manifests).
    pub db: Option<PathBuf>,
    /// Extra command-line arguments.
    pub args: Vec<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// Bearer token the harness's admin helpers send (does not configure caje by itself).
    pub admin_token: Option<String>,
}

impl CajeConfig {
    /// One `host = "*"` origin plus `extra`.
    pub fn for_origin(origin_url: &str, extra: &str) -> CajeConfig {
        CajeConfig {
            origins: vec![("*".into(), origin_url.into())],
            extra: extra.into(),
            ..CajeConfig::default()
        }
    }

    /// Configures `token` with `--admin-token` and makes the admin helpers send it.
    pub fn with_admin_token(mut self, token: &str) -> CajeConfig {
        self.args.push("--admin-token".into());
        self.args.push(token.into());
        self.admin_token = Some(token.into());
        self
    }

    pub fn toml(&self) -> String {
        let mut s = String::new();
        for (host, url) in &self.origins {
            s.push_str(&format!("[[origins]]\nhost = {host:?}\nurl = {url:?}\n\n"));
        }
        s.push_str(&self.extra);
        s.push('\n');
        s
    }
}

/// A running caje node.
pub struct Caje {
    proc: Proc,
    pub dir: Arc<NodeDir>,
    pub cfg: CajeConfig,
}

impl Caje {
    /// caje in front of `origin` with `extra` TOML (tables such as `[cache]`).
    pub fn start(origin: &Origin, extra: &str) -> Caje {
        Caje::start_with(CajeConfig::for_origin(&origin.base(), extra))
    }

    /// caje with a full config in a fresh node dir.
    pub fn start_with(cfg: CajeConfig) -> Caje {
        Caje::start_in(NodeDir::new(), cfg)
    }

    /// caje in an existing node dir (same cache dir and db: a restart).
    pub fn start_in(dir: Arc<NodeDir>, cfg: CajeConfig) -> Caje {
        std::fs::write(dir.config_path(), cfg.toml()).expect("writing caje.toml");
        let n = dir.started.fetch_add(1, Ordering::SeqCst);
        let mut cmd = Command::new(caje_bin());
        cmd.arg("--config")
            .arg(dir.config_path())
            .args(["--listen", "127.0.0.1:0"])
            .arg("--cache-dir")
            .arg(dir.cache_dir())
            .arg("--db")
            .arg(cfg.db.clone().unwrap_or_else(|| dir.db()))
            .args(&cfg.args)
            .current_dir(dir.cwd())
            .env_remove("CAJE_ADMIN_TOKEN")
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or("info".into()),
            );
        for (k, v) in &cfg.env {
            cmd.env(k, v);
        }
        let proc = Proc::spawn(cmd, "caje", dir.root().join(format!("caje-{n}.stderr")));
        Caje { proc, dir, cfg }
    }

    pub fn addr(&self) -> SocketAddr {
        self.proc.addr
    }

    pub fn pid(&self) -> i32 {
        self.proc.pid()
    }

    /// `http://IP:PORT<path>`
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.proc.addr)
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.dir.cache_dir()
    }

    pub fn stderr(&self) -> String {
        self.proc.stderr()
    }

    /// Sends SIGTERM and waits (up to 20 s) for the exit; the node dir is kept.
    pub fn stop(&mut self) -> ExitStatus {
        self.proc.terminate(Duration::from_secs(20))
    }

    /// Sends SIGTERM without waiting.
    pub fn sigterm(&self) {
        self.proc.signal(libc::SIGTERM);
    }

    /// Waits up to `limit` for the process to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        self.proc.wait_for(limit)
    }

    /// Stops this process (asserting exit code 0) and starts a new one on the same dir.
    pub fn restart(mut self) -> Caje {
        let st = self.stop();
        assert_eq!(
            st.code(),
            Some(0),
            "caje exited with {st} on SIGTERM; stderr:\n{}",
            self.stderr()
        );
        Caje::start_in(self.dir.clone(), self.cfg.clone())
    }

    fn admin_headers(&self) -> Vec<(String, String)> {
        match &self.cfg.admin_token {
            Some(t) => vec![("Authorization".into(), format!("Bearer {t}"))],
            None => Vec::new(),
        }
    }

    /// An admin request with the configured token (if any); panics on transport errors.
    pub async fn admin(&self, method: &str, path: &str) -> Resp {
        let hs = self.admin_headers();
        let hs: Vec<(&str, &str)> = hs.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        request(method, &self.url(path), &hs, b"").await
    }

    /// `GET /_caje/stats` as JSON.
    pub async fn stats(&self) -> Value {
        let r = self.admin("GET", "/_caje/stats").await;
        assert_eq!(r.status, 200, "/_caje/stats: {}", r.text());
        r.json()
    }

    /// One counter from `/_caje/stats`; panics when missing.
    pub async fn stat(&self, name: &str) -> u64 {
        let s = self.stats().await;
        s[name]
            .as_u64()
            .unwrap_or_else(|| panic!("/_caje/stats has no numeric `{name}`: {s}"))
    }

    /// `GET /_caje/list` as JSON: every page of it (following `next`), merged into one
    /// `{"count", "entries"}`.
    pub async fn list(&self) -> Value {
        let mut entries = Vec::new();
        let mut path = "/_caje/list?limit=10000".to_owned();
        loop {
            let r = self.admin("GET", &path).await;
            assert_eq!(r.status, 200, "{path}: {}", r.text());
            let page = r.json();
            if let Some(a) = page["entries"].as_array() {
                entries.extend(a.iter().cloned());
            }
            match page["next"].as_str() {
                Some(next) => path = format!("/_caje/list?limit=10000&after={next}"),
                None => break,
            }
        }
        serde_json::json!({ "count": entries.len(), "entries": entries })
    }

    /// Entries of `/_caje/list` whose path starts with `path_prefix`.
    pub async fn list_entries(&self, path_prefix: &str) -> Vec<Value> {
        let list = self.list().await;
        list["entries"]
            .as_array()
            .unwrap_or_else(|| panic!("/_caje/list has no entries array: {list}"))
            .iter()
            .filter(|e| {
                e["path"]
                    .as_str()
                    .is_some_and(|p| p.starts_with(path_prefix))
            })
            .cloned()
            .collect()
    }

    /// Waits (up to 10 s) until `/_caje/list` shows an on-disk entry whose path starts with
    /// `path`. Tests whose subject is not "a stored miss is a hit at once" call this after a
    /// stored miss, so that they test their own behaviour even while caje commits entries
    /// asynchronously (see `miss_then_hit.rs` for that behaviour itself).
    pub async fn settle(&self, path: &str) {
        self.settle_n(path, 1).await;
    }

    /// Like [`Caje::settle`], for at least `n` on-disk entries (Vary variants).
    pub async fn settle_n(&self, path: &str, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let entries = self.list_entries(path).await;
            if entries.iter().filter(|e| e["on_disk"] == true).count() >= n {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "not {n} on-disk entries for {path} in /_caje/list within 10 s: {entries:?}; \
                     stats {}",
                    self.stats().await
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits (up to 10 s) until `/_caje/list` shows any row (local or not) for `path`.
    pub async fn settle_listed(&self, path: &str) {
        let what = format!("{path} listed in /_caje/list");
        eventually(10, &what, || async {
            !self.list_entries(path).await.is_empty()
        })
        .await;
    }

    /// `GET path` (must be a stored miss), then [`Caje::settle`].
    pub async fn store(&self, path: &str) -> Resp {
        let r = self.get(path).await;
        assert_eq!(r.status, 200, "GET {path}: {}", r.text());
        r.cache_status().assert_fwd("uri-miss", 200, true);
        self.settle(path).await;
        r
    }

    /// `GET` through caje (`Host` is caje's `IP:PORT`); panics on transport errors.
    pub async fn get(&self, path: &str) -> Resp {
        get(&self.url(path), &[]).await
    }

    /// `GET` through caje with `Host: caje.test`: the host is part of the cache key, so tests
    /// that restart caje (new port) use this. Panics on transport errors.
    pub async fn get_site(&self, path: &str) -> Resp {
        get(&self.url(path), &[("Host", SITE_HOST)]).await
    }
}

/// A `SocketAddr` nobody listens on (bound then released).
pub fn closed_port_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("binding a probe port");
    let addr = l.local_addr().expect("probe local addr");
    drop(l);
    addr
}

// ---------------------------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------------------------

/// Every regular file under `dir` (recursively; missing dir → empty).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(p),
                Ok(_) => out.push(p),
                Err(_) => {}
            }
        }
    }
    out.sort();
    out
}

/// Every directory under `dir` (recursively, excluding `dir`).
pub fn dirs_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.push(e.path());
                stack.push(e.path());
            }
        }
    }
    out.sort();
    out
}

/// Files under `dir` whose name ends with `suffix` (e.g. `.meta`).
pub fn files_with_suffix(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    files_under(dir)
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect()
}

/// Whether `needle` occurs in `hay`.
pub fn contains_bytes(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// XORs `len` bytes in the middle of the file with 0x5A (same length, different content).
pub fn flip_middle_bytes(path: &Path, len: usize) {
    let mut bytes =
        std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    assert!(!bytes.is_empty(), "{} is empty", path.display());
    let start = bytes.len() / 2;
    let end = (start + len).min(bytes.len());
    for b in &mut bytes[start..end] {
        *b ^= 0x5A;
    }
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

/// `VmRSS` and `VmHWM` of a process, in KiB.
pub fn rss_kib(pid: i32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// A `/gen` path with its query (for readability in tests): `gen("a", "cc=max-age%3D60")`.
pub fn gen(name: &str, query: &str) -> String {
    if query.is_empty() {
        format!("/gen/{name}")
    } else {
        format!("/gen/{name}?{query}")
    }
}

/// Asserts two bodies are equal without dumping megabytes on failure.
#[track_caller]
pub fn assert_same_body(got: &[u8], want: &[u8], what: &str) {
    if got == want {
        return;
    }
    let first_diff = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    let excerpt = |b: &[u8]| {
        let end = (first_diff + 40).min(b.len());
        String::from_utf8_lossy(&b[first_diff.min(end)..end]).into_owned()
    };
    panic!(
        "{what}: bodies differ: got {} bytes, want {} bytes, first difference at byte {first_diff} \
         (got {:?}, want {:?})",
        got.len(),
        want.len(),
        excerpt(got),
        excerpt(want)
    );
}
