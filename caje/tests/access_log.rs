//! `log.access = PATH`: one JSON line per request with the cache outcome and the origin's
//! address when it was asked; SIGHUP reopens the file after logrotate moved it; hostile
//! paths and hosts stay one valid line each; the lines buffered in memory reach the file
//! before caje exits on SIGTERM and on a SIGUSR2 upgrade.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::http::{raw, try_request};
use support::{eventually, gen, within, Caje, CajeConfig, NodeDir, Origin};

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[tokio::test]
async fn one_json_line_per_request_and_reopen_on_sighup() {
    within(60, async {
        let origin = Origin::start();
        let dir = NodeDir::new();
        let log = dir.root().join("access.log");
        let extra = format!("[log]\naccess = {:?}\n", log.display().to_string());
        let caje = Caje::start_in(dir.clone(), CajeConfig::for_origin(&origin.base(), &extra));
        let path = gen("log", "cc=max-age%3D60&bytes=1500");

        caje.get(&path)
            .await
            .cache_status()
            .assert_fwd("uri-miss", 200, true);
        caje.settle(&path).await;
        caje.get(&path).await.cache_status().assert_hit();
        eventually(10, "three lines (miss, list, hit)", || {
            let n = lines(&log).len();
            async move { n >= 3 }
        })
        .await;
        let all = lines(&log);
        // Lines are in order per thread; the runtime's threads' lines of the same 100 ms
        // may interleave in any order (as nginx workers' do), so find them by content.
        let miss = all
            .iter()
            .find(|l| l["cache"] == "miss")
            .expect("a miss line");
        assert_eq!(miss["method"], "GET");
        assert_eq!(miss["path"], path);
        assert_eq!(miss["host"], caje.addr().to_string());
        assert_eq!(miss["status"], 200);
        assert_eq!(miss["bytes"], 1500);
        assert_eq!(miss["cache"], "miss");
        assert_eq!(
            miss["cache_status"],
            "caje; fwd=uri-miss; fwd-status=200; stored"
        );
        assert_eq!(miss["origin_addr"], origin.addr().to_string(), "{miss}");
        assert!(miss["origin_ms"].as_f64().unwrap() > 0.0, "{miss}");
        assert!(miss["duration_ms"].as_f64().unwrap() >= miss["origin_ms"].as_f64().unwrap());
        assert!(miss["client"].as_str().unwrap().starts_with("127.0.0.1:"));
        assert!(miss["time"].as_str().unwrap().ends_with('Z'), "{miss}");
        let hit = all
            .iter()
            .find(|l| l["cache"] == "hit")
            .expect("a hit line");
        assert_eq!(hit["bytes"], 1500);
        assert!(
            hit["origin_addr"].is_null() && hit["origin_ms"].is_null(),
            "{hit}"
        );
        assert!(
            all.iter().any(|l| l["cache"] == "admin"),
            "the settle's /_caje/list: {all:?}"
        );

        // logrotate: move the file, then SIGHUP; new lines go to a new file at the old path.
        let rotated = dir.root().join("access.log.1");
        std::fs::rename(&log, &rotated).unwrap();
        // SAFETY: a signal to our own child process.
        unsafe { libc::kill(caje.pid(), libc::SIGHUP) };
        eventually(10, "a new access.log after SIGHUP", || {
            let caje = &caje;
            let path = path.clone();
            let log = log.clone();
            async move {
                caje.get(&path).await.cache_status().assert_hit();
                !lines(&log).is_empty()
            }
        })
        .await;
        assert!(lines(&rotated).len() >= all.len());
        assert_eq!(lines(&log)[0]["cache"], "hit");
        assert!(caje.stderr().contains("reopening the access log"));
        let stats = caje.stats().await;
        assert_eq!(stats["live"]["access_log"]["dropped"], 0, "{stats}");
    })
    .await;
}

#[tokio::test]
async fn an_unwritable_access_log_stops_caje_at_start() {
    within(30, async {
        let origin = Origin::start();
        let dir = NodeDir::new();
        let bad = dir.root().join("no-such-dir").join("access.log");
        let cfg = CajeConfig::for_origin(
            &origin.base(),
            &format!("[log]\naccess = {:?}\n", bad.display().to_string()),
        );
        std::fs::write(dir.config_path(), cfg.toml()).unwrap();
        let out = std::process::Command::new(support::caje_bin())
            .arg("--config")
            .arg(dir.config_path())
            .args(["--listen", "127.0.0.1:0", "--cache-dir"])
            .arg(dir.cache_dir())
            .arg("--db")
            .arg(dir.db())
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("cannot open the access log"), "{err}");
    })
    .await;
}

/// `flush_ms`: how often the writer takes the buffered lines. The exit tests use a minute, so
/// that only the flush at exit can write their lines in time.
fn log_config(origin: &Origin, dir: &NodeDir, flush_ms: u64) -> CajeConfig {
    let log = dir.root().join("access.log");
    let extra = format!(
        "[log]\naccess = {:?}\naccess_flush_ms = {flush_ms}\n",
        log.display().to_string()
    );
    CajeConfig::for_origin(&origin.base(), &extra)
}

fn count_path(path: &Path, want: &str) -> usize {
    lines(path).iter().filter(|l| l["path"] == want).count()
}

/// SIGTERM right after the last response: the lines still in memory (the writer writes
/// every 100 ms) are written before the exit.
#[tokio::test]
async fn sigterm_loses_no_line() {
    within(60, async {
        let origin = Origin::start();
        let dir = NodeDir::new();
        let mut caje = Caje::start_in(dir.clone(), log_config(&origin, &dir, 60_000));
        let path = gen("term", "cc=max-age%3D60&bytes=100");
        for _ in 0..300 {
            assert_eq!(caje.get(&path).await.status, 200);
        }
        let st = caje.stop();
        assert_eq!(st.code(), Some(0), "{}", caje.stderr());
        assert_eq!(count_path(&dir.root().join("access.log"), &path), 300);
        // Written by the flush at exit, not by luck (the writer's own end, when the last
        // handle is dropped, races the process's exit).
        assert!(caje.stderr().contains("access log flushed before exit"));
    })
    .await;
}

/// Hostile bytes in the path and `Host` (quotes, backslashes, a tab, JSON of their own,
/// non-UTF-8): each request is still one line of valid JSON with those values in it.
#[tokio::test]
async fn hostile_requests_are_one_valid_line_each() {
    within(60, async {
        let origin = Origin::start();
        let dir = NodeDir::new();
        let log = dir.root().join("access.log");
        let caje = Caje::start_in(dir.clone(), log_config(&origin, &dir, 100));
        let cases: [(&[u8], &[u8]); 4] = [
            (b"/gen/q\"},{\"status\":1?x=\\", b"h\"o\\st"),
            ("/gen/caf\u{e9}/\u{1f600}".as_bytes(), b"a\tb"),
            (b"/gen/n\\\"", b"\xff\xfe\"x"),
            (b"/gen/plain", b"{\"time\":\"forged\"}\x80"),
        ];
        for (path, host) in cases {
            let mut req = b"GET ".to_vec();
            req.extend_from_slice(path);
            req.extend_from_slice(b" HTTP/1.1\r\nHost: ");
            req.extend_from_slice(host);
            req.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
            let out = raw(caje.addr(), &req, Duration::ZERO).await;
            assert!(out.status.is_some(), "no response: {:?}", out.error);
        }
        eventually(10, "a line per request", || {
            let n = lines(&log).len();
            async move { n >= cases.len() }
        })
        .await;
        let all = lines(&log);
        assert_eq!(all.len(), cases.len(), "{all:?}");
        for (path, host) in cases {
            let path = std::str::from_utf8(path).unwrap();
            let line = all
                .iter()
                .find(|l| l["path"] == path)
                .unwrap_or_else(|| panic!("no line for {path}: {all:?}"));
            // Bytes that are not UTF-8 are logged as U+FFFD.
            assert_eq!(line["host"], *String::from_utf8_lossy(host), "{line}");
            assert!(line["status"].as_u64().is_some(), "{line}");
        }
        let text = std::fs::read_to_string(&log).unwrap();
        assert_eq!(text.lines().count(), cases.len(), "{text}");
    })
    .await;
}

fn kill(pid: i32, sig: i32) {
    // SAFETY: a plain syscall to a caje this test started (or its successor).
    unsafe {
        libc::kill(pid, sig);
    }
}

/// SIGTERMs a process when dropped (a no-op once it has exited and been reaped).
struct StopOnDrop(i32);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let mut status = 0;
        // SAFETY: waitpid on one specific pid; WNOHANG never blocks.
        if unsafe { libc::waitpid(self.0, &mut status, libc::WNOHANG) } == 0 {
            kill(self.0, libc::SIGTERM);
        }
    }
}

/// The pid in the last `caje ready ... pid=N` line of `stderr` (whose fields may be wrapped in
/// ANSI colour codes).
fn last_ready_pid(stderr: &str) -> Option<i32> {
    let mut plain = String::new();
    let mut rest = stderr;
    while let Some(i) = rest.find('\x1b') {
        plain.push_str(&rest[..i]);
        rest = &rest[i..];
        rest = rest.find('m').map_or("", |m| &rest[m + 1..]);
    }
    plain.push_str(rest);
    let line = plain.lines().rev().find(|l| l.contains("caje ready"))?;
    let rest = &line[line.find(" pid=")? + 5..];
    rest.split_whitespace().next()?.parse().ok()
}

/// Waits for a descendant re-parented to this (sub-reaper) process; its exit code.
fn wait_orphan(pid: i32, limit: Duration) -> Option<i32> {
    let deadline = Instant::now() + limit;
    loop {
        let mut status = 0;
        // SAFETY: waitpid on one specific pid; WNOHANG never blocks.
        if unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == pid {
            return libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A SIGUSR2 upgrade: the old process writes its buffered lines before it exits, the new one
/// appends to the same file, and SIGTERM to the new one writes the rest: one line per request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr2_upgrade_loses_no_line() {
    within(90, async {
        // The new process outlives the old one (its parent): it is re-parented to this
        // process, so that its exit code can be read.
        // SAFETY: prctl with these arguments only changes this process's reaping role.
        assert_eq!(
            unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) },
            0
        );
        let origin = Origin::start();
        let dir = NodeDir::new();
        let mut old = Caje::start_in(dir.clone(), log_config(&origin, &dir, 60_000));
        let path = gen("upgrade", "cc=max-age%3D60&bytes=100");
        for _ in 0..200 {
            assert_eq!(old.get(&path).await.status, 200);
        }
        let old_pid = old.pid();
        kill(old_pid, libc::SIGUSR2);
        let st = tokio::task::block_in_place(|| old.wait_exit(Duration::from_secs(30)))
            .unwrap_or_else(|| panic!("the old caje did not exit: {}", old.stderr()));
        assert_eq!(st.code(), Some(0), "{}", old.stderr());
        let stderr = old.stderr();
        assert!(
            stderr.contains("upgrade: the new process serves"),
            "{stderr}"
        );
        let new_pid = last_ready_pid(&stderr).unwrap_or_else(|| panic!("no pid: {stderr}"));
        assert_ne!(new_pid, old_pid, "{stderr}");
        // The new process is no child the harness stops: stop it if an assertion below fails.
        let _guard = StopOnDrop(new_pid);
        // Every line the old process served is in the file once it has exited.
        let log = dir.root().join("access.log");
        assert_eq!(count_path(&log, &path), 200);
        assert!(
            stderr.contains("access log flushed before exit"),
            "{stderr}"
        );
        for _ in 0..200 {
            let r = try_request("GET", &old.url(&path), &[], b"").await.unwrap();
            assert_eq!(r.status, 200);
        }
        kill(new_pid, libc::SIGTERM);
        let code = tokio::task::block_in_place(|| wait_orphan(new_pid, Duration::from_secs(30)));
        assert_eq!(code, Some(0), "{}", old.stderr());
        assert_eq!(count_path(&log, &path), 400);
    })
    .await;
}
