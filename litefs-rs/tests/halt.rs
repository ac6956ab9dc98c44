//! HALT on a plain directory: a real OFD lock on `<db>-lock`, timeouts, late-success release,
//! in-process queueing and retries.
#![cfg(target_os = "linux")]

use std::fs::{File, OpenOptions};
use std::path::Path;
use std::time::{Duration, Instant};

use litefs::ofd::{self, LockError, LockKind, LockRange};
use litefs::{
    Database, Error, HaltKind, ManualClock, Mount, RetryPolicy, WaitPhase, DEFAULT_HALT_LEASE,
};

fn setup() -> (tempfile::TempDir, Database) {
    let dir = tempfile::tempdir().unwrap();
    let db = Mount::open(dir.path()).unwrap().database("app.db").unwrap();
    std::fs::write(db.path(), b"").unwrap();
    (dir, db)
}

fn open_rw(path: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .unwrap()
}

fn is_locked(path: &Path) -> bool {
    let probe = open_rw(path);
    ofd::query(&probe, LockKind::Write, LockRange::HALT)
        .unwrap()
        .is_some()
}

/// Polls until `cond` holds, for at most `limit`.
fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    cond()
}

#[test]
fn halt_on_missing_database_fails_clearly_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = Mount::open(dir.path())
        .unwrap()
        .database("nope.db")
        .unwrap();
    match db.halt() {
        Err(Error::DatabaseNotFound { path }) => assert_eq!(path, db.path()),
        other => panic!("expected DatabaseNotFound, got {other:?}"),
    }
    match db.halt_timeout(Duration::from_secs(1)) {
        Err(Error::DatabaseNotFound { .. }) => {}
        other => panic!("expected DatabaseNotFound, got {other:?}"),
    }
    assert!(!db.lock_path().exists(), "no lock file for a missing db");
    assert!(!db.path().exists());
}

#[test]
fn guard_holds_a_real_lock_and_releases_it_on_drop() {
    let (_dir, db) = setup();
    let guard = db.halt().unwrap();
    assert_eq!(guard.kind(), HaltKind::Local);
    // A local lock stands in for a replica's HALT, lease included.
    let left = guard.remaining_lifetime().unwrap();
    assert!(
        left <= litefs::DEFAULT_HALT_LEASE && left > Duration::from_secs(20),
        "{left:?}"
    );
    assert!(guard.is_held().unwrap());

    let other = open_rw(db.lock_path());
    assert_eq!(
        ofd::try_lock(&other, LockKind::Write, LockRange::HALT),
        Err(LockError::WouldBlock),
        "another process/description must be excluded"
    );
    let holder = ofd::query(&other, LockKind::Write, LockRange::HALT)
        .unwrap()
        .unwrap();
    assert_eq!(holder.pid(), -1);

    drop(guard);
    assert_eq!(
        ofd::query(&other, LockKind::Write, LockRange::HALT).unwrap(),
        None
    );
}

#[test]
fn release_reports_success_and_frees_the_lock() {
    let (_dir, db) = setup();
    let guard = db.halt().unwrap();
    assert!(is_locked(db.lock_path()));
    guard.release().unwrap();
    assert!(!is_locked(db.lock_path()));
    // The in-process slot is free again too.
    db.halt_timeout(Duration::from_millis(500)).unwrap();
}

#[test]
fn is_held_notices_a_deleted_lock_file() {
    let (_dir, db) = setup();
    let guard = db.halt().unwrap();
    assert!(guard.is_held().unwrap());
    std::fs::remove_file(db.lock_path()).unwrap();
    assert!(!guard.is_held().unwrap());
}

#[test]
fn halt_timeout_gives_up_against_a_held_lock() {
    let (_dir, db) = setup();
    let holder = open_rw(db.lock_path());
    ofd::try_lock(&holder, LockKind::Write, LockRange::HALT).unwrap();

    let start = Instant::now();
    let err = db.halt_timeout(Duration::from_millis(200)).unwrap_err();
    let elapsed = start.elapsed();
    assert!(
        matches!(
            err,
            Error::Timeout {
                phase: WaitPhase::Lock,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.is_retryable() && err.is_timeout());
    assert!(elapsed >= Duration::from_millis(190), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    drop(holder);
}

#[test]
fn late_success_after_timeout_is_released_not_leaked() {
    let (_dir, db) = setup();
    let holder = open_rw(db.lock_path());
    ofd::try_lock(&holder, LockKind::Write, LockRange::HALT).unwrap();

    assert!(db.halt_timeout(Duration::from_millis(100)).is_err());
    // The abandoned lock thread still waits in the kernel; let it win now.
    ofd::unlock(&holder, LockRange::HALT).unwrap();

    // If the late guard leaked, it would keep both the OFD lock and the in-process slot, and
    // this bounded HALT would time out.
    let guard = db
        .halt_timeout(Duration::from_secs(3))
        .expect("the late acquisition must have been released");
    drop(guard);
    assert!(
        eventually(Duration::from_secs(2), || !is_locked(db.lock_path())),
        "lock still held after every guard is gone"
    );
    // And the holder's description can take it again.
    ofd::try_lock(&holder, LockKind::Write, LockRange::HALT).unwrap();
}

#[test]
fn halts_in_one_process_queue_instead_of_contending_in_the_kernel() {
    let (_dir, db) = setup();
    let guard = db.halt().unwrap();
    let db2 = db.clone();
    let err = std::thread::spawn(move || db2.halt_timeout(Duration::from_millis(150)))
        .join()
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Timeout {
                phase: WaitPhase::ProcessQueue,
                ..
            }
        ),
        "{err:?}"
    );
    drop(guard);
}

#[test]
fn two_mount_handles_on_one_directory_share_the_queue() {
    let (dir, db) = setup();
    let same = Mount::open(dir.path().join("."))
        .unwrap()
        .database("app.db")
        .unwrap();
    let guard = db.halt().unwrap();
    let err = same.halt_timeout(Duration::from_millis(100)).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Timeout {
                phase: WaitPhase::ProcessQueue,
                ..
            }
        ),
        "{err:?}"
    );
    drop(guard);
    same.halt_timeout(Duration::from_secs(1)).unwrap();
}

#[test]
fn queued_halt_proceeds_when_the_first_is_dropped() {
    let (_dir, db) = setup();
    let guard = db.halt().unwrap();
    let db2 = db.clone();
    let waiter = std::thread::spawn(move || {
        let g = db2.halt_timeout(Duration::from_secs(5))?;
        Ok::<_, Error>(g.held_for())
    });
    std::thread::sleep(Duration::from_millis(100));
    assert!(!waiter.is_finished());
    drop(guard);
    waiter.join().unwrap().unwrap();
}

#[test]
fn with_halt_runs_the_closure_under_the_lock() {
    let (_dir, db) = setup();
    let lock_path = db.lock_path().to_owned();
    let seen = db
        .with_halt(|guard| {
            assert_eq!(guard.kind(), HaltKind::Local);
            is_locked(&lock_path)
        })
        .unwrap();
    assert!(seen, "closure must run while the lock is held");
    assert!(!is_locked(db.lock_path()));
    let n = db.with_halt_timeout(Duration::from_secs(1), |_| 7).unwrap();
    assert_eq!(n, 7);
}

#[test]
fn retry_policy_retries_timeouts_until_the_lock_frees() {
    let (_dir, db) = setup();
    let holder = open_rw(db.lock_path());
    ofd::try_lock(&holder, LockKind::Write, LockRange::HALT).unwrap();
    let releaser = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        drop(holder);
    });
    let policy = RetryPolicy::new(20)
        .with_backoff(Duration::from_millis(20), Duration::from_millis(50))
        .with_attempt_timeout(Some(Duration::from_millis(100)));
    let start = Instant::now();
    let guard = db.halt_with_retry(&policy).unwrap();
    assert!(start.elapsed() >= Duration::from_millis(250));
    drop(guard);
    releaser.join().unwrap();
}

#[test]
fn retry_policy_stops_at_max_attempts_and_on_permanent_errors() {
    let (dir, db) = setup();
    let holder = open_rw(db.lock_path());
    ofd::try_lock(&holder, LockKind::Write, LockRange::HALT).unwrap();
    let policy = RetryPolicy::new(2)
        .with_backoff(Duration::from_millis(10), Duration::from_millis(10))
        .with_attempt_timeout(Some(Duration::from_millis(80)));
    let start = Instant::now();
    let err = db.halt_with_retry(&policy).unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    let elapsed = start.elapsed();
    assert!(elapsed >= Duration::from_millis(160), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");

    let missing = Mount::open(dir.path())
        .unwrap()
        .database("gone.db")
        .unwrap();
    let start = Instant::now();
    let slow = RetryPolicy::new(5).with_backoff(Duration::from_secs(1), Duration::from_secs(1));
    assert!(matches!(
        missing.halt_with_retry(&slow),
        Err(Error::DatabaseNotFound { .. })
    ));
    assert!(
        start.elapsed() < Duration::from_millis(900),
        "a permanent error must not be retried"
    );
}

#[test]
fn forced_litefs_mount_still_takes_a_local_lock() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(".primary"), "node-a\n").unwrap();
    let mount = Mount::open_as_litefs(dir.path()).unwrap();
    let db = mount.database("app.db").unwrap();
    std::fs::write(db.path(), b"").unwrap();
    let guard = db.halt().unwrap();
    // Not FUSE: the lock is a local OFD lock, whatever `.primary` says.
    assert_eq!(guard.kind(), HaltKind::Local);
    assert!(is_locked(db.lock_path()));
}

#[test]
fn guard_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<litefs::HaltGuard>();
    assert_send_sync::<Database>();
    assert_send_sync::<Mount>();
    let (_dir, db) = setup();
    let guard = db.halt().unwrap();
    let kind = std::thread::spawn(move || {
        let k = guard.kind();
        guard.release().map(|()| k)
    })
    .join()
    .unwrap()
    .unwrap();
    assert_eq!(kind, HaltKind::Local);
}

#[test]
fn debug_output_does_not_expose_the_descriptor() {
    let (_dir, db) = setup();
    let guard = db.halt().unwrap();
    let text = format!("{guard:?}");
    assert!(
        text.contains("Local") && text.contains("app.db-lock"),
        "{text}"
    );
    assert!(!text.contains("fd"), "{text}");
}

// The lease, on an injected clock: no test waits for it.

#[test]
fn an_expired_guard_is_not_held_and_refuses_writes_although_the_lock_is_in_place() {
    let (_dir, db) = setup();
    let clock = ManualClock::new();
    let guard = db.clone().with_clock(clock.clone()).halt().unwrap();
    assert_eq!(guard.lease(), Some(DEFAULT_HALT_LEASE));
    assert_eq!(guard.write(|| 1).unwrap(), 1);

    clock.advance(DEFAULT_HALT_LEASE - Duration::from_millis(1));
    assert!(guard.is_held().unwrap());
    assert!(!guard.is_expired());
    assert_eq!(guard.remaining_lifetime(), Some(Duration::from_millis(1)));

    clock.advance(Duration::from_millis(1));
    assert!(guard.is_expired());
    assert!(
        is_locked(db.lock_path()),
        "the OFD lock itself is still there"
    );
    assert!(
        !guard.is_held().unwrap(),
        "but the guard no longer trusts it"
    );
    assert_eq!(guard.remaining_lifetime(), Some(Duration::ZERO));
    let mut ran = false;
    match guard.write(|| ran = true) {
        Err(e @ Error::HaltExpired { .. }) => {
            assert!(e.is_retryable());
            assert!(e.to_string().contains("past its lease of 25s"), "{e}");
        }
        other => panic!("expected HaltExpired, got {other:?}"),
    }
    assert!(!ran, "a refused write must not run");
    match guard.check_lease() {
        Err(Error::HaltExpired {
            path,
            held_for,
            lease,
        }) => {
            assert_eq!(path, db.lock_path());
            assert_eq!(lease, DEFAULT_HALT_LEASE);
            assert!(held_for >= DEFAULT_HALT_LEASE);
        }
        other => panic!("expected HaltExpired, got {other:?}"),
    }
}

#[test]
fn releasing_an_expired_local_guard_reports_it_and_still_frees_the_lock() {
    let (_dir, db) = setup();
    let clock = ManualClock::new();
    let guard = db.clone().with_clock(clock.clone()).halt().unwrap();
    clock.advance(Duration::from_secs(31));
    assert!(matches!(guard.release(), Err(Error::HaltExpired { .. })));
    // A local OFD lock cannot wedge anything: it is released at once, on this thread.
    assert!(!is_locked(db.lock_path()));
    db.halt_timeout(Duration::from_millis(500)).unwrap();
}

#[test]
fn dropping_an_expired_local_guard_frees_the_lock_and_the_queue() {
    let (_dir, db) = setup();
    let clock = ManualClock::new();
    let guard = db.clone().with_clock(clock.clone()).halt().unwrap();
    clock.advance(Duration::from_secs(60));
    drop(guard);
    assert!(!is_locked(db.lock_path()));
    let next = db.halt_timeout(Duration::from_millis(500)).unwrap();
    assert!(!next.is_expired(), "a new guard gets a new lease");
}

#[test]
fn the_lease_is_configurable_per_database() {
    let (_dir, db) = setup();
    let clock = ManualClock::new();
    let db = db
        .with_clock(clock.clone())
        .with_halt_lease(Duration::from_secs(2));
    assert_eq!(db.halt_lease(), Duration::from_secs(2));
    let guard = db.halt().unwrap();
    assert_eq!(guard.lease(), Some(Duration::from_secs(2)));
    clock.advance(Duration::from_millis(1_999));
    assert!(guard.check_lease().is_ok());
    clock.advance(Duration::from_millis(1));
    assert!(guard.check_lease().is_err());
    // Clones keep the settings; a fresh handle has the default.
    assert_eq!(db.clone().halt_lease(), Duration::from_secs(2));
    let fresh = db.mount().database(db.name()).unwrap();
    assert_eq!(fresh.halt_lease(), DEFAULT_HALT_LEASE);
}

/// Whether this process's `litefs-halt` thread is blocked in `fcntl` (syscall 72 on x86_64,
/// 25 on aarch64), read from `/proc`: the lock request has been made.
fn lock_thread_is_in_fcntl() -> bool {
    let fcntl = if cfg!(target_arch = "aarch64") {
        "25 "
    } else {
        "72 "
    };
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return false;
    };
    tasks.flatten().any(|task| {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        let syscall = std::fs::read_to_string(task.path().join("syscall")).unwrap_or_default();
        comm.trim() == "litefs-halt" && syscall.starts_with(fcntl)
    })
}

#[test]
fn the_lease_counts_from_the_lock_request_not_from_the_grant() {
    // The primary starts its 30 s when it grants the halt, before the replica has caught up
    // and the call returns: a lease counted from the return would run late.
    let (_dir, db) = setup();
    let clock = ManualClock::new();
    let blocker = open_rw(db.lock_path());
    ofd::try_lock(&blocker, LockKind::Write, LockRange::HALT).unwrap();
    let waiting = {
        let db = db.clone().with_clock(clock.clone());
        std::thread::spawn(move || db.halt_timeout(Duration::from_secs(10)))
    };
    assert!(
        eventually(Duration::from_secs(5), lock_thread_is_in_fcntl),
        "the lock request never started"
    );
    clock.advance(Duration::from_secs(7)); // while the request waits
    ofd::unlock(&blocker, LockRange::HALT).unwrap();
    let guard = waiting.join().unwrap().unwrap();
    assert!(guard.held_for() >= Duration::from_secs(7), "{guard:?}");
    assert_eq!(
        guard.remaining_lifetime(),
        Some(DEFAULT_HALT_LEASE - guard.held_for())
    );
}

#[test]
fn with_halt_hands_out_a_guard_whose_write_checks_the_lease() {
    let (_dir, db) = setup();
    let clock = ManualClock::new();
    let db = db.with_clock(clock.clone());
    let result = db
        .with_halt(|guard| {
            guard.write(|| ()).unwrap();
            clock.advance(Duration::from_secs(25));
            guard.write(|| ())
        })
        .unwrap();
    assert!(matches!(result, Err(Error::HaltExpired { .. })));
    assert!(!is_locked(db.lock_path()));
}
