//! HALT on a plain directory: a real OFD lock on `<db>-lock`, timeouts, late-success release,
//! in-process queueing and retries.
#![cfg(target_os = "linux")]

use std::fs::{File, OpenOptions};
use std::path::Path;
use std::time::{Duration, Instant};

use litefs::ofd::{self, LockError, LockKind, LockRange};
use litefs::{Database, Error, HaltKind, Mount, RetryPolicy, WaitPhase};

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
    assert_eq!(guard.remaining_lifetime(), None);
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
