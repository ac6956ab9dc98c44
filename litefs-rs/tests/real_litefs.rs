//! litefs-rs on a real two-node LiteFS cluster (n1 primary, n2 replica, FUSE mounts): the
//! branches that plain-directory tests cannot reach.
//!
//! Needs `LITEFS_BIN` (the LiteFS binary, with `cluster.sh` beside it: `../shared/litefs/` on
//! the project's machines; `.ci/run` exports it), root, `/dev/fuse` and `fusermount3`.
//! Without them the test prints `SKIP real-litefs: <why>` to stderr and passes.
//!
//! One cluster per run, so everything is one test that runs the cases in order (nextest
//! runs each test function in its own process, and two clusters would need two port pairs).
//! The cluster lives in its own `LITEFS_HOME` (a temp dir) on a free port pair, and a guard
//! runs `cluster.sh stop` (which unmounts) when the test ends, also on panic.
#![cfg(all(target_os = "linux", feature = "http"))]

use std::fs::{File, OpenOptions};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use litefs::http::{Client, Event, PrimaryMonitor};
use litefs::ofd::{self, LockError, LockKind, LockRange, OfdCommand};
use litefs::{Database, Error, HaltKind, ManualClock, Mount, Role, DEFAULT_HALT_LEASE};

const DB: &str = "real.db";

/// A running cluster; dropping it stops both nodes and unmounts.
struct Cluster {
    script: PathBuf,
    bin: PathBuf,
    home: Option<tempfile::TempDir>,
    port: u16,
}

impl Cluster {
    /// Starts n1 and n2, or says why this machine cannot.
    fn start() -> Result<Cluster, String> {
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
            let mut cluster = Cluster {
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

    fn home(&self) -> &Path {
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

    fn node(&self, args: &[&str]) {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "cluster.sh {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn mnt(&self, node: &str) -> PathBuf {
        self.home().join(node).join("mnt")
    }

    fn url(&self, node: &str) -> String {
        let port = if node == "n1" {
            self.port
        } else {
            self.port + 1
        };
        format!("http://127.0.0.1:{port}")
    }

    fn stop(&mut self) {
        let Some(home) = self.home.take() else {
            return;
        };
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

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
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

fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

fn open_rw(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().read(true).write(true).open(path)
}

fn count(conn: &rusqlite::Connection) -> i64 {
    conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap()
}

fn connect(db: &Database) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(db.path()).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    conn
}

#[test]
fn real_litefs() {
    let mut cluster = match Cluster::start() {
        Ok(c) => c,
        Err(why) => {
            eprintln!("SKIP real-litefs: {why}");
            return;
        }
    };
    let started = Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let n1 = Mount::open(cluster.mnt("n1")).unwrap();
    let n2 = Mount::open(cluster.mnt("n2")).unwrap();

    roles_from_the_mount(&n1, &n2);
    let (db1, db2) = replication_position_and_wait_for_txid(&n1, &n2);
    rt.block_on(http_api(&cluster, &db1));
    primary_halt_is_a_no_op(&db1);
    remote_halt_writes_through_the_primary(&db1, &db2);
    errno_cases(&db2, &n2);
    expired_lease_on_a_remote_halt(&db1, &db2);
    rt.block_on(primary_down_and_back(&mut cluster, &db1, &db2));

    let took = started.elapsed();
    eprintln!("real-litefs: all cases took {took:?}");
    drop(rt);
    cluster.stop();
    assert!(took < Duration::from_secs(60), "{took:?}");
}

/// `.primary` present only on the connected replica; both are FUSE mounts.
fn roles_from_the_mount(n1: &Mount, n2: &Mount) {
    assert!(n1.is_fuse_mount() && n2.is_fuse_mount());
    assert!(n1.is_litefs() && n2.is_litefs());
    assert_eq!(n1.role().unwrap(), Role::Primary);
    assert!(n1.is_primary().unwrap());
    assert_eq!(n1.primary().unwrap(), None);
    assert_eq!(
        n2.role().unwrap(),
        Role::Replica {
            primary: "n1".into()
        }
    );
    assert_eq!(n2.primary().unwrap().as_deref(), Some("n1"));
    assert_eq!(
        n1.lag().unwrap().map(|l| l.duration()),
        Some(Some(Duration::ZERO))
    );
}

/// A database created on n1 reaches n2; `-pos` and `wait_for_txid` follow it.
fn replication_position_and_wait_for_txid(n1: &Mount, n2: &Mount) -> (Database, Database) {
    let db1 = n1.database(DB).unwrap();
    let db2 = n2.database(DB).unwrap();
    assert!(matches!(db2.pos(), Err(Error::PosUnavailable { .. })));
    {
        let conn = connect(&db1);
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; CREATE TABLE t (a); INSERT INTO t VALUES (1);",
        )
        .unwrap();
    }
    let pos1 = db1.pos().unwrap();
    assert!(pos1.txid().get() >= 1, "{pos1:?}");
    assert_eq!(db1.txid().unwrap(), pos1.txid());
    let start = Instant::now();
    // `-pos` only appears on n2 once the database arrived.
    assert!(eventually(Duration::from_secs(10), || db2.pos().is_ok()));
    let pos2 = db2
        .wait_for_txid(pos1.txid(), Duration::from_secs(10))
        .unwrap();
    eprintln!("real-litefs: replication to n2 took {:?}", start.elapsed());
    assert_eq!(pos2, pos1, "same TXID and checksum on both nodes");
    assert_eq!(count(&connect(&db2)), 1);

    let ahead = litefs::Txid::new(pos1.txid().get() + 1000);
    match db2.wait_for_txid(ahead, Duration::from_millis(100)) {
        Err(Error::TxidTimeout {
            wanted, current, ..
        }) => assert_eq!((wanted, current), (ahead, pos1.txid())),
        other => panic!("expected TxidTimeout, got {other:?}"),
    }
    let names: Vec<String> = n2
        .databases()
        .unwrap()
        .iter()
        .map(|d| d.name().to_owned())
        .collect();
    assert_eq!(names, [DB]);
    (db1, db2)
}

async fn next(events: &mut litefs::http::EventStream) -> Event {
    tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .expect("an event within 10 s")
        .expect("the stream does not end")
        .expect("a well-formed event")
}

/// `/info`, `/events` and `PrimaryMonitor` against both nodes' real HTTP API.
async fn http_api(cluster: &Cluster, db1: &Database) {
    let c1 = Client::new(&cluster.url("n1")).unwrap();
    let c2 = Client::new(&cluster.url("n2")).unwrap();
    let i1 = c1.info().await.unwrap();
    let i2 = c2.info().await.unwrap();
    assert!(i1.is_primary && i1.candidate && !i2.is_primary && !i2.candidate);
    assert_eq!(i1.cluster_id, i2.cluster_id);
    assert!(i1.cluster_id.is_some());
    assert_eq!(i2.primary_hostname.as_deref(), Some("n1"));
    assert_eq!(i1.role(), Role::Primary);
    assert_eq!(
        i2.role(),
        Role::Replica {
            primary: "n1".into()
        }
    );

    let mut ev1 = c1.events();
    let mut ev2 = c2.events();
    assert!(matches!(
        next(&mut ev1).await,
        Event::Init {
            is_primary: true,
            hostname: None,
            ..
        }
    ));
    match next(&mut ev2).await {
        Event::Init {
            is_primary: false,
            hostname,
            ..
        } => assert_eq!(hostname.as_deref(), Some("n1")),
        other => panic!("expected init, got {other:?}"),
    }
    let m1 = PrimaryMonitor::spawn(&c1);
    let m2 = PrimaryMonitor::spawn(&c2);

    let db = db1.clone();
    tokio::task::spawn_blocking(move || {
        connect(&db)
            .execute("INSERT INTO t VALUES (2)", [])
            .unwrap()
    })
    .await
    .unwrap();
    let txid = db1.txid().unwrap();
    for events in [&mut ev1, &mut ev2] {
        loop {
            match next(events).await {
                Event::Tx(tx) if tx.db == DB && tx.txid == txid => {
                    assert_eq!(tx.page_size, 4096);
                    break;
                }
                Event::Tx(tx) => assert!(tx.txid < txid, "{tx:?}"),
                other => panic!("unexpected event {other:?}"),
            }
        }
    }
    let mut r1 = m1.subscribe();
    let mut r2 = m2.subscribe();
    tokio::time::timeout(Duration::from_secs(5), r1.wait_for(|r| *r == Role::Primary))
        .await
        .unwrap()
        .unwrap();
    tokio::time::timeout(
        Duration::from_secs(5),
        r2.wait_for(|r| r.primary_hostname() == Some("n1")),
    )
    .await
    .unwrap()
    .unwrap();
}

/// On the primary HALT succeeds as a no-op: nothing to expire, nothing held at LiteFS.
fn primary_halt_is_a_no_op(db1: &Database) {
    let clock = ManualClock::new();
    let guard = db1
        .clone()
        .with_clock(clock.clone())
        .halt_timeout(Duration::from_secs(5))
        .unwrap();
    assert_eq!(guard.kind(), HaltKind::Primary);
    assert!(guard.is_held().unwrap());
    assert_eq!(guard.lease(), None);
    clock.advance(Duration::from_secs(120));
    assert!(!guard.is_expired(), "a primary's no-op HALT never expires");
    let conn = connect(db1);
    guard
        .write(|| conn.execute("INSERT INTO t VALUES (3)", []))
        .unwrap()
        .unwrap();
    guard.release().unwrap();
}

/// A replica's HALT: commits on n2 are applied on n1 before COMMIT returns.
fn remote_halt_writes_through_the_primary(db1: &Database, db2: &Database) {
    let conn2 = connect(db2);
    // Without HALT a replica cannot write (WAL mode: "disk I/O error").
    let refused = conn2.execute("INSERT INTO t VALUES (99)", []).unwrap_err();
    assert!(refused.to_string().contains("disk I/O error"), "{refused}");
    db2.wait_for_txid(db1.txid().unwrap(), Duration::from_secs(10))
        .unwrap();

    // Read before HALT: while n2 holds it, even a new reader on n1 waits (and fails with
    // SQLITE_PROTOCOL after 10 s).
    let before = count(&connect(db1));
    let start = Instant::now();
    let guard = db2.halt_timeout(Duration::from_secs(12)).unwrap();
    let acquired = start.elapsed();
    assert_eq!(guard.kind(), HaltKind::Remote);
    assert!(guard.is_held().unwrap());
    assert!(guard.remaining_lifetime().unwrap() > DEFAULT_HALT_LEASE - Duration::from_secs(5));
    // Another description on n2 sees this node's HALT too (pid -1).
    let probe = open_rw(db2.lock_path()).unwrap();
    let holder = ofd::query(&probe, LockKind::Write, LockRange::HALT)
        .unwrap()
        .unwrap();
    assert_eq!((holder.kind(), holder.pid()), (LockKind::Write, -1));

    let mut conn2 = conn2;
    let commit = Instant::now();
    let tx = conn2.transaction().unwrap();
    for i in 0..1000 {
        tx.execute("INSERT INTO t VALUES (?1)", [i]).unwrap();
    }
    guard.write(|| tx.commit()).unwrap().unwrap();
    let committed = commit.elapsed();
    // Synchronous: the primary is at n2's position as soon as COMMIT returned.
    assert_eq!(db1.pos().unwrap(), db2.pos().unwrap());
    let release = Instant::now();
    guard.release().unwrap();
    eprintln!(
        "real-litefs: remote HALT acquired in {acquired:?}, 1000-row commit {committed:?}, released in {:?}",
        release.elapsed()
    );
    let released = || {
        ofd::query(&probe, LockKind::Write, LockRange::HALT)
            .unwrap()
            .is_none()
    };
    assert!(eventually(Duration::from_secs(2), released));
    assert_eq!(count(&connect(db1)), before + 1000);
    // The primary writes freely again.
    connect(db1)
        .execute("INSERT INTO t VALUES (4)", [])
        .unwrap();
}

/// The errno table of LITEFS.md, on the real lock file.
fn errno_cases(db2: &Database, n2: &Mount) {
    let lock = open_rw(db2.lock_path()).unwrap();
    // ENOSYS: the non-blocking call, and a read lock.
    assert_eq!(
        ofd::try_lock(&lock, LockKind::Write, LockRange::HALT),
        Err(LockError::NotSupported)
    );
    assert_eq!(
        ofd::lock_wait(&lock, LockKind::Read, LockRange::HALT).map(|_| ()),
        Err(LockError::NotSupported)
    );
    // EINVAL: another byte, another length, l_pid != 0.
    for range in [LockRange::new(73, 1), LockRange::new(72, 2)] {
        assert_eq!(
            ofd::lock_wait(&lock, LockKind::Write, range).map(|_| ()),
            Err(LockError::InvalidArgument),
            "{range:?}"
        );
    }
    // SAFETY: a zeroed `struct flock` is a valid value of that plain C struct.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as _;
    fl.l_whence = libc::SEEK_SET as _;
    fl.l_start = 72;
    fl.l_len = 1;
    fl.l_pid = 1234;
    assert_eq!(
        ofd::fcntl_raw(&lock, OfdCommand::SetLockWait, &mut fl),
        Err(LockError::InvalidArgument)
    );

    // ENOLCK: the same handle asks twice.
    ofd::lock_wait(&lock, LockKind::Write, LockRange::HALT).unwrap();
    assert_eq!(
        ofd::lock_wait(&lock, LockKind::Write, LockRange::HALT).map(|_| ()),
        Err(LockError::AlreadyHeld)
    );
    // EIO after 10 s: a second handle on the same node while the first holds HALT (the
    // crate's own halts queue inside the process instead, so they never meet this).
    let second = open_rw(db2.lock_path()).unwrap();
    let start = Instant::now();
    let waited = std::thread::spawn(move || {
        let r = ofd::lock_wait(&second, LockKind::Write, LockRange::HALT).map(|_| ());
        (r, start.elapsed())
    });
    let (second_result, after) = waited.join().unwrap();
    eprintln!("real-litefs: second handle on the same node failed after {after:?}");
    assert_eq!(second_result, Err(LockError::Io));
    assert!(
        after >= Duration::from_secs(9) && after < Duration::from_secs(13),
        "{after:?}"
    );
    ofd::unlock(&lock, LockRange::HALT).unwrap();
    drop(lock);

    // ENOENT: a database this node does not have. The crate refuses before opening anything,
    // and LiteFS itself has no `-lock` for it.
    let missing = n2.database("missing.db").unwrap();
    assert!(matches!(
        missing.halt(),
        Err(Error::DatabaseNotFound { .. })
    ));
    assert_eq!(
        open_rw(missing.lock_path()).unwrap_err().kind(),
        std::io::ErrorKind::NotFound
    );
}

/// A remote HALT past its lease: refused although LiteFS still reports it, and dropping it
/// releases it (from a background thread) before LiteFS's own expiry, so nothing wedges.
fn expired_lease_on_a_remote_halt(db1: &Database, db2: &Database) {
    let clock = ManualClock::new();
    let guard = db2
        .clone()
        .with_clock(clock.clone())
        .halt_timeout(Duration::from_secs(12))
        .unwrap();
    assert_eq!(guard.kind(), HaltKind::Remote);
    clock.advance(DEFAULT_HALT_LEASE);
    let probe = open_rw(db2.lock_path()).unwrap();
    assert!(
        ofd::query(&probe, LockKind::Write, LockRange::HALT)
            .unwrap()
            .is_some(),
        "LiteFS still reports the HALT"
    );
    assert!(
        !guard.is_held().unwrap(),
        "but the lease says it is not safe"
    );
    let mut conn2 = connect(db2);
    let tx = conn2.transaction().unwrap();
    tx.execute("INSERT INTO t VALUES (5)", []).unwrap();
    assert!(matches!(
        guard.write(|| tx.commit()),
        Err(Error::HaltExpired { .. })
    ));
    // (the refused transaction rolls back when dropped)
    drop(guard);
    assert!(
        eventually(Duration::from_secs(5), || ofd::query(
            &probe,
            LockKind::Write,
            LockRange::HALT
        )
        .unwrap()
        .is_none()),
        "the release reached LiteFS"
    );
    // The primary writes at once (not after LiteFS's expiry), and n2 still replicates.
    let start = Instant::now();
    connect(db1)
        .execute("INSERT INTO t VALUES (6)", [])
        .unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    db2.wait_for_txid(db1.txid().unwrap(), Duration::from_secs(10))
        .unwrap();
    // And a new HALT works at once.
    db2.halt_timeout(Duration::from_secs(12))
        .unwrap()
        .release()
        .unwrap();
}

/// With n1 stopped, n2 has no primary: `.primary` is gone, HALT fails with EIO, the monitor
/// says Unknown. With n1 back, all of it recovers.
async fn primary_down_and_back(cluster: &mut Cluster, db1: &Database, db2: &Database) {
    let c2 = Client::new(&cluster.url("n2")).unwrap();
    let monitor = PrimaryMonitor::spawn(&c2);
    let mut role = monitor.subscribe();
    tokio::time::timeout(
        Duration::from_secs(5),
        role.wait_for(|r| r.primary_hostname() == Some("n1")),
    )
    .await
    .unwrap()
    .unwrap();

    // No connection to n1's database is open here (SIGBUS risk in WAL mode when it stops).
    tokio::task::block_in_place(|| cluster.node(&["stop-node", "n1"]));
    let n2 = db2.mount().clone();
    assert!(
        eventually(Duration::from_secs(10), || n2.role().unwrap()
            == Role::Unknown),
        "n2 still reports {:?}",
        n2.role()
    );
    tokio::time::timeout(
        Duration::from_secs(10),
        role.wait_for(|r| *r == Role::Unknown),
    )
    .await
    .expect("the monitor notices")
    .unwrap();
    let start = Instant::now();
    let db = db2.clone();
    let halt = tokio::task::spawn_blocking(move || db.halt_timeout(Duration::from_secs(12)))
        .await
        .unwrap();
    match halt {
        Err(Error::Lock {
            source: LockError::Io,
            ..
        }) => {}
        other => panic!("expected EIO with no primary, got {other:?}"),
    }
    eprintln!(
        "real-litefs: HALT without a primary failed after {:?}",
        start.elapsed()
    );

    tokio::task::block_in_place(|| cluster.node(&["start-node", "n1"]));
    tokio::time::timeout(
        Duration::from_secs(15),
        role.wait_for(|r| r.primary_hostname() == Some("n1")),
    )
    .await
    .expect("the monitor sees n1 again")
    .unwrap();
    assert!(eventually(Duration::from_secs(10), || n2.role().unwrap()
        == Role::Replica {
            primary: "n1".into()
        }));
    let (db1, db2) = (db1.clone(), db2.clone());
    tokio::task::spawn_blocking(move || {
        connect(&db1)
            .execute("INSERT INTO t VALUES (7)", [])
            .unwrap();
        db2.wait_for_txid(db1.txid().unwrap(), Duration::from_secs(10))
            .unwrap();
    })
    .await
    .unwrap();
}
