//! Restarts and upgrades under load lose no request (issue 11, part 1).
//!
//! An open-loop load (a fixed request rate, one task and one fresh connection per request)
//! over hits, misses and long streaming bodies runs against a real caje in front of a real
//! slow_server, while caje is upgraded five times with SIGUSR2, or stopped and started five
//! times under socket activation (this test holds the listening socket, as systemd would).
//! A request fails if it is refused, reset, answered 5xx, or its body is cut short.

mod support;

use std::io::{BufRead, BufReader};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use support::http::try_request;
use support::{caje_bin, gen, within, CajeConfig, NodeDir, Origin};

/// Requests per second of the open-loop load.
const RATE: u64 = 150;
/// Every this many requests, one is a long streaming body.
const LONG_EVERY: u64 = 40;
/// Distinct URLs that are hits once warmed.
const HOT_URLS: u64 = 10;

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Hit,
    Miss,
    Long,
}

/// What the load saw.
#[derive(Default)]
struct Tally {
    ok: u64,
    failures: Vec<String>,
    /// Latencies of hits and misses (long streams take ~1 s by design).
    short_ms: Vec<f64>,
    longs_ok: u64,
}

impl Tally {
    fn p99(&self) -> f64 {
        let mut v = self.short_ms.clone();
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            return 0.0;
        }
        v[((v.len() as f64 * 0.99).ceil() as usize).clamp(1, v.len()) - 1]
    }
}

fn target(n: u64, run: &str) -> (Kind, String, usize) {
    if n % LONG_EVERY == 0 {
        // Cacheable ones go through the spool and commit while their process drains;
        // no-store ones stream straight through.
        let cc = if n % (2 * LONG_EVERY) == 0 {
            "max-age%3D600"
        } else {
            "no-store"
        };
        let path = gen(
            &format!("long-{run}-{n}"),
            &format!("cc={cc}&bytes=300000&chunk_bytes=10000&stream_delay_ms=30"),
        );
        (Kind::Long, path, 300_000)
    } else if n % 4 == 1 {
        let path = gen(
            &format!("miss-{run}-{n}"),
            "cc=max-age%3D600&bytes=3000&delay_ms=2",
        );
        (Kind::Miss, path, 3000)
    } else {
        (Kind::Hit, hot_path(n % HOT_URLS), 5000)
    }
}

fn hot_path(i: u64) -> String {
    gen(&format!("hot-{i}"), "cc=max-age%3D600&bytes=5000")
}

/// Sends `RATE` requests a second to `base` until `stop` is set; returns what they saw.
async fn load(base: String, run: &'static str, stop: Arc<AtomicBool>) -> Tally {
    let tally = Arc::new(Mutex::new(Tally::default()));
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / RATE));
    // Open loop: a late tick is caught up, never skipped, so a slow server sees the backlog.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = tokio::task::JoinSet::new();
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        tick.tick().await;
        n += 1;
        let (kind, path, want_len) = target(n, run);
        let url = format!("{base}{path}");
        let tally = tally.clone();
        tasks.spawn(async move {
            let started = Instant::now();
            let res = try_request("GET", &url, &[], b"").await;
            let ms = started.elapsed().as_secs_f64() * 1000.0;
            let mut t = tally.lock().unwrap();
            match res {
                Ok(r) if r.status < 500 && r.body.len() == want_len => {
                    t.ok += 1;
                    if kind == Kind::Long {
                        t.longs_ok += 1;
                    } else {
                        t.short_ms.push(ms);
                    }
                }
                Ok(r) => t.failures.push(format!(
                    "{path}: status {} with {} of {want_len} bytes",
                    r.status,
                    r.body.len()
                )),
                Err(e) => t.failures.push(format!("{path}: {e}")),
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    Arc::try_unwrap(tally)
        .ok()
        .expect("all tasks joined")
        .into_inner()
        .unwrap()
}

/// Runs the load for `secs` seconds.
async fn load_for(base: &str, run: &'static str, secs: f64) -> Tally {
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(load(base.to_owned(), run, stop.clone()));
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::SeqCst);
    load.await.unwrap()
}

/// Spawns caje with the node dir's config; returns it and a channel of its (and its
/// successors', which share its stdout) `listening on` lines.
fn spawn_caje(dir: &NodeDir, mut cmd: Command) -> (Child, mpsc::Receiver<String>) {
    let n = std::fs::read_dir(dir.root()).map_or(0, |d| d.count());
    let stderr = std::fs::File::create(dir.root().join(format!("caje-{n}.stderr"))).unwrap();
    cmd.arg("--config")
        .arg(dir.config_path())
        .arg("--cache-dir")
        .arg(dir.cache_dir())
        .arg("--db")
        .arg(dir.db())
        .current_dir(dir.cwd())
        .env_remove("CAJE_ADMIN_TOKEN")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr));
    let mut child = cmd.spawn().expect("spawning caje");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.starts_with("caje listening on http://") {
                let _ = tx.send(line);
            }
        }
    });
    (child, rx)
}

fn next_listening(rx: &mpsc::Receiver<String>, dir: &NodeDir) -> String {
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(line) => line["caje listening on ".len()..].trim().to_owned(),
        Err(_) => panic!("caje did not report listening; stderr:\n{}", stderrs(dir)),
    }
}

fn stderrs(dir: &NodeDir) -> String {
    let mut out = String::new();
    for f in support::files_with_suffix(dir.root(), ".stderr") {
        out.push_str(&std::fs::read_to_string(f).unwrap_or_default());
    }
    out
}

fn kill(pid: i32, sig: i32) {
    // SAFETY: a plain syscall; every pid signalled here is a caje this test started (directly,
    // or through an upgrade of one), not yet reaped.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Processes whose parent is `ppid`.
fn children_of(ppid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces, so parse after the last ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        if rest.split_whitespace().nth(1).and_then(|p| p.parse().ok()) == Some(ppid) {
            out.push(pid);
        }
    }
    out
}

/// Waits for a descendant that was re-parented to this (sub-reaper) process to exit;
/// returns its exit code, or a description of how it ended.
async fn wait_orphan(pid: i32, limit: Duration) -> Result<i32, String> {
    let deadline = Instant::now() + limit;
    loop {
        let mut status = 0;
        // SAFETY: waitpid on one specific pid; WNOHANG never blocks.
        let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if rc == pid {
            return if libc::WIFEXITED(status) {
                Ok(libc::WEXITSTATUS(status))
            } else {
                Err(format!("pid {pid} ended with wait status {status}"))
            };
        }
        // 0: still running; -1/ECHILD: not re-parented to us yet (its parent still lives).
        if Instant::now() > deadline {
            return Err(format!("pid {pid} still running after {limit:?}"));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn node(origin: &Origin) -> Arc<NodeDir> {
    let dir = NodeDir::new();
    // The grace covers the long streams (about 1 s) with room to spare.
    let cfg = CajeConfig::for_origin(&origin.base(), "[server]\nshutdown_grace_ms = 8000\n");
    std::fs::write(dir.config_path(), cfg.toml()).unwrap();
    dir
}

async fn warm(base: &str) {
    for i in 0..HOT_URLS {
        let r = try_request("GET", &format!("{base}{}", hot_path(i)), &[], b"")
            .await
            .unwrap();
        assert_eq!(r.status, 200);
    }
}

/// One test, so that the two scenarios do not run in parallel and load each other's
/// measurements (test harnesses run separate tests at the same time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_and_socket_activated_restarts_under_load_lose_nothing() {
    within(80, async {
        five_sigusr2_upgrades().await;
        five_socket_activated_stop_starts().await;
    })
    .await
}

async fn five_sigusr2_upgrades() {
    {
        // Descendants whose parent exits (every upgraded-away caje's successor) are
        // re-parented to this process, so that it can collect their exit codes.
        // SAFETY: prctl with these arguments only changes this process's reaping role.
        assert_eq!(
            unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) },
            0
        );
        let origin = Origin::start();
        let dir = node(&origin);
        let mut cmd = Command::new(caje_bin());
        cmd.args(["--listen", "127.0.0.1:0"]);
        let (mut first, listening) = spawn_caje(&dir, cmd);
        let addr = next_listening(&listening, &dir);
        warm(&addr).await;

        // The baseline runs before and after the upgrades, so that a machine whose load
        // changes during the test (other builds) weighs on both figures alike.
        let mut baseline = load_for(&addr, "base", 2.5).await;

        let stop = Arc::new(AtomicBool::new(false));
        let load = tokio::spawn(load(addr.clone(), "upgrade", stop.clone()));
        tokio::time::sleep(Duration::from_millis(700)).await;
        let mut serving = first.id() as i32;
        let mut exits = Vec::new();
        for round in 1..=5 {
            let before = children_of(serving);
            kill(serving, libc::SIGUSR2);
            let got = tokio::task::block_in_place(|| next_listening(&listening, &dir));
            assert_eq!(
                got, addr,
                "round {round}: the new process serves another address"
            );
            let new: Vec<i32> = children_of(serving)
                .into_iter()
                .filter(|p| !before.contains(p))
                .collect();
            assert_eq!(new.len(), 1, "round {round}: new processes {new:?}");
            let old = serving;
            serving = new[0];
            // The old one drains its long streams (about 1 s) and exits.
            let code = if round == 1 {
                tokio::task::block_in_place(|| {
                    let deadline = Instant::now() + Duration::from_secs(15);
                    loop {
                        if let Some(st) = first.try_wait().unwrap() {
                            break st.code().ok_or_else(|| format!("{st}"));
                        }
                        assert!(Instant::now() < deadline, "first caje did not exit");
                        std::thread::sleep(Duration::from_millis(10));
                    }
                })
            } else {
                wait_orphan(old, Duration::from_secs(15)).await
            };
            exits.push((old, code));
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.store(true, Ordering::SeqCst);
        let upgraded = load.await.unwrap();
        let after = load_for(&addr, "after", 2.5).await;
        baseline.ok += after.ok;
        baseline.failures.extend(after.failures);
        baseline.short_ms.extend(after.short_ms);
        baseline.longs_ok += after.longs_ok;
        kill(serving, libc::SIGTERM);
        let last = wait_orphan(serving, Duration::from_secs(15)).await;

        println!(
            "baseline: {} ok, {} failed, p99 {:.1} ms ({} short requests, {} long streams)",
            baseline.ok,
            baseline.failures.len(),
            baseline.p99(),
            baseline.short_ms.len(),
            baseline.longs_ok
        );
        println!(
            "5 upgrades: {} ok, {} failed, p99 {:.1} ms ({} short requests, {} long streams)",
            upgraded.ok,
            upgraded.failures.len(),
            upgraded.p99(),
            upgraded.short_ms.len(),
            upgraded.longs_ok
        );
        println!("old processes' exits: {exits:?}; last: {last:?}");
        // The hand-over pauses (nobody accepts) and their catch-up, from the logs.
        for line in stderrs(&dir).lines() {
            if line.contains("pause_ms")
                || line.contains("caught up")
                || line.contains("checked against the index snapshot")
            {
                println!("{line}");
            }
        }
        assert!(
            baseline.failures.is_empty() && upgraded.failures.is_empty(),
            "failed requests: baseline {:?}, upgrades {:?}; stderr:\n{}",
            baseline.failures,
            upgraded.failures,
            stderrs(&dir)
        );
        for (pid, code) in &exits {
            assert_eq!(
                code,
                &Ok(0),
                "old caje {pid} did not exit 0; stderr:\n{}",
                stderrs(&dir)
            );
        }
        assert_eq!(
            last,
            Ok(0),
            "the last caje did not exit 0 on SIGTERM; stderr:\n{}",
            stderrs(&dir)
        );
        assert!(upgraded.longs_ok >= 5, "too few long streams ran");
        // 2x the baseline p99, with a floor: on a loaded 2-core machine a baseline p99 of a
        // few ms doubles from scheduling noise alone.
        let limit = 2.0 * baseline.p99().max(25.0);
        assert!(
            upgraded.p99() <= limit,
            "p99 {:.1} ms during upgrades, over {limit:.1} ms (baseline {:.1} ms)",
            upgraded.p99(),
            baseline.p99()
        );
    }
}

async fn five_socket_activated_stop_starts() {
    {
        let origin = Origin::start();
        let dir = node(&origin);
        // The supervisor's socket, with a deep accept queue for the seconds nobody accepts.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(1024).unwrap().into_std().unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let fd = listener.as_raw_fd();
        let start = || {
            // systemd's protocol: the socket at fd 3, LISTEN_FDS=1, LISTEN_PID = the service's
            // own pid, which `exec` in sh keeps.
            let mut cmd = Command::new("sh");
            cmd.arg("-c")
                .arg(r#"LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" "$@""#)
                .arg(caje_bin())
                // Would fail if caje bound it: the test's socket holds the address.
                .args(["--listen", &addr["http://".len()..]]);
            // SAFETY: dup2/fcntl are async-signal-safe; they put the socket at fd 3 without
            // close-on-exec in the child only.
            unsafe {
                cmd.pre_exec(move || {
                    if fd == 3 {
                        let flags = libc::fcntl(3, libc::F_GETFD);
                        libc::fcntl(3, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
                    } else if libc::dup2(fd, 3) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            let (child, rx) = spawn_caje(&dir, cmd);
            assert_eq!(next_listening(&rx, &dir), addr);
            child
        };
        let mut caje = start();
        warm(&addr).await;
        let stop = Arc::new(AtomicBool::new(false));
        let load = tokio::spawn(load(addr.clone(), "activation", stop.clone()));
        let mut exits = Vec::new();
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(800)).await;
            kill(caje.id() as i32, libc::SIGTERM);
            let st = tokio::task::block_in_place(|| caje.wait().unwrap());
            exits.push(st.code());
            caje = tokio::task::block_in_place(start);
        }
        tokio::time::sleep(Duration::from_millis(800)).await;
        stop.store(true, Ordering::SeqCst);
        let tally = load.await.unwrap();
        kill(caje.id() as i32, libc::SIGTERM);
        exits.push(tokio::task::block_in_place(|| caje.wait().unwrap()).code());
        println!(
            "5 stop+start cycles under socket activation: {} ok, {} failed, p99 {:.1} ms \
             ({} short requests, {} long streams); exits {exits:?}",
            tally.ok,
            tally.failures.len(),
            tally.p99(),
            tally.short_ms.len(),
            tally.longs_ok
        );
        assert!(
            tally.failures.is_empty(),
            "failed requests: {:?}; stderr:\n{}",
            tally.failures,
            stderrs(&dir)
        );
        assert!(exits.iter().all(|c| *c == Some(0)), "exits {exits:?}");
        drop(listener);
    }
}

/// A new process that cannot start (here: a broken config file) leaves the old one serving,
/// with a log line that says so.
#[tokio::test]
async fn a_failed_upgrade_leaves_the_old_process_serving() {
    within(40, async {
        let origin = Origin::start();
        let mut caje = support::Caje::start(&origin, "");
        let path = gen("kept", "cc=max-age%3D600&bytes=100");
        assert_eq!(caje.get(&path).await.status, 200);
        std::fs::write(caje.dir.config_path(), "this is not toml =\n").unwrap();
        kill(caje.pid(), libc::SIGUSR2);
        let c = &caje;
        support::eventually(
            20,
            "the old process logs the failed upgrade",
            || async move {
                c.stderr()
                    .contains("upgrade failed, this process goes on serving")
            },
        )
        .await;
        let r = caje.get(&path).await;
        assert_eq!(r.status, 200);
        r.cache_status().assert_hit();
        let st = caje.stop();
        assert_eq!(st.code(), Some(0), "stderr:\n{}", caje.stderr());
    })
    .await
}

/// `dir`'s stderr files without the terminal colours the log puts around field names.
fn plain_stderrs(dir: &NodeDir) -> String {
    let mut out = String::new();
    let logs = stderrs(dir);
    let mut chars = logs.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // `ESC [ ... m`
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The pid of the last caje that logged `caje ready` in `dir`'s stderr files.
fn last_ready_pid(dir: &NodeDir) -> Option<i32> {
    let logs = plain_stderrs(dir);
    let line = logs.lines().rev().find(|l| l.contains("caje ready"))?;
    let rest = line.split("pid=").nth(1)?;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// The entry file under the cache dir whose header names `path`.
fn entry_file_of(dir: &NodeDir, path: &str) -> std::path::PathBuf {
    let found: Vec<_> = support::files_with_suffix(&dir.cache_dir(), ".entry")
        .into_iter()
        .filter(|f| support::contains_bytes(&std::fs::read(f).unwrap_or_default(), path.as_bytes()))
        .collect();
    assert_eq!(found.len(), 1, "entry files of {path}: {found:?}");
    found.into_iter().next().unwrap()
}

/// A SIGUSR2 upgrade hands the cache index over through a snapshot: the old process writes it
/// as the upgrade begins, the new one loads it (no scan of the headers) and answers hits for
/// the pages it lists without asking the origin, while the background check, once the new
/// process holds the directory, repairs what the snapshot got wrong (here a page whose file
/// was deleted behind the old process's back: dropped, then a miss). `/_caje/status` shows
/// the state throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_hands_the_index_over_in_a_snapshot() {
    within(60, async {
        // SAFETY: prctl with these arguments only changes this process's reaping role (the
        // new caje outlives the one this test started, and is re-parented here).
        assert_eq!(
            unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) },
            0
        );
        let origin = Origin::start();
        let dir = NodeDir::new();
        // No edge warming: it could fetch the deleted page again before the check runs.
        let cfg = CajeConfig::for_origin(&origin.base(), "[populate]\nenabled = false\n");
        std::fs::write(dir.config_path(), cfg.toml()).unwrap();
        let mut cmd = Command::new(caje_bin());
        cmd.args(["--listen", "127.0.0.1:0"]);
        let (mut first, listening) = spawn_caje(&dir, cmd);
        let addr = next_listening(&listening, &dir);
        let status = |addr: String| async move {
            let r = try_request("GET", &format!("{addr}/_caje/status"), &[], b"")
                .await
                .unwrap();
            assert_eq!(r.status, 200);
            r.json()["cache"]["index"].clone()
        };
        let index = status(addr.clone()).await;
        assert_eq!(index["source"], "scan", "{index}");
        assert_eq!(index["state"], "scanned", "{index}");

        let pages: Vec<String> = (0..4)
            .map(|i| gen(&format!("kept-{i}"), "cc=max-age%3D600&bytes=3000"))
            .collect();
        let gone = gen("gone", "cc=max-age%3D600&bytes=3000");
        for p in pages.iter().chain([&gone]) {
            let url = format!("{addr}{p}");
            assert_eq!(
                try_request("GET", &url, &[], b"").await.unwrap().status,
                200
            );
            // Stored once a second request is a hit.
            let mut tries = 0;
            while !try_request("GET", &url, &[], b"")
                .await
                .unwrap()
                .cache_status()
                .is_hit()
            {
                tries += 1;
                assert!(tries < 200, "{p} was not stored");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        std::fs::remove_file(entry_file_of(&dir, "/gen/gone")).unwrap();

        kill(first.id() as i32, libc::SIGUSR2);
        let got = tokio::task::block_in_place(|| next_listening(&listening, &dir));
        assert_eq!(got, addr);
        let code = tokio::task::block_in_place(|| {
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                if let Some(st) = first.try_wait().unwrap() {
                    break st.code();
                }
                assert!(Instant::now() < deadline, "the old caje did not exit");
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        assert_eq!(code, Some(0), "stderr:\n{}", stderrs(&dir));
        let logs = plain_stderrs(&dir);
        let new = last_ready_pid(&dir).unwrap_or_else(|| panic!("no pid in:\n{logs}"));
        assert_ne!(new, first.id() as i32);
        // A failed assertion below must not leave the new caje running.
        let mut guard = KillOnDrop(Some(new));
        assert!(
            logs.contains("upgrade: index snapshot written for the new process"),
            "{logs}"
        );
        assert!(
            logs.lines()
                .any(|l| l.contains("cache index loaded from its snapshot")
                    && l.contains("handover=true")),
            "the new process did not load the snapshot:\n{logs}"
        );

        for p in &pages {
            let r = try_request("GET", &format!("{addr}{p}"), &[], b"")
                .await
                .unwrap();
            assert!(
                r.cache_status().is_hit(),
                "{p} after the upgrade: `{}`",
                r.cache_status().raw
            );
            assert_eq!(r.body.len(), 3000);
        }
        let index = status(addr.clone()).await;
        assert_eq!(index["source"], "snapshot", "{index}");
        assert_eq!(index["handover"], true, "{index}");
        assert_eq!(index["loaded_entries"], 5, "{index}");
        let a = addr.clone();
        support::eventually(20, "the check of the directory ends", || {
            let a = a.clone();
            async move { status(a).await["state"] == "checked" }
        })
        .await;
        let check = status(addr.clone()).await["check"].clone();
        assert_eq!(check["files_checked"], 4, "{check}");
        assert_eq!(check["dropped"], 1, "{check}");
        assert_eq!(check["added"], 0, "{check}");
        assert!(check["finished_at"].as_u64().is_some(), "{check}");
        let r = try_request("GET", &format!("{addr}{gone}"), &[], b"")
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        assert!(!r.cache_status().is_hit(), "{}", r.cache_status().raw);
        for (i, _) in pages.iter().enumerate() {
            assert_eq!(origin.requests(&format!("/gen/kept-{i}")).await, 1);
        }
        assert_eq!(origin.requests("/gen/gone").await, 2);
        guard.0 = None;
        kill(new, libc::SIGTERM);
        assert_eq!(wait_orphan(new, Duration::from_secs(15)).await, Ok(0));
    })
    .await
}

/// Kills the caje it names when dropped, unless disarmed (`.0 = None`).
struct KillOnDrop(Option<i32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            kill(pid, libc::SIGKILL);
        }
    }
}
