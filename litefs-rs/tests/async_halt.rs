//! Async HALT (feature `tokio`): cancellation, timeouts, the in-process coordinator, and
//! never blocking a runtime worker.
#![cfg(all(target_os = "linux", feature = "tokio"))]

use std::fs::{File, OpenOptions};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use litefs::ofd::{self, LockKind, LockRange};
use litefs::{Database, Error, HaltKind, Mount, Txid, WaitPhase};

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
    ofd::query(open_rw(path), LockKind::Write, LockRange::HALT)
        .unwrap()
        .is_some()
}

#[tokio::test]
async fn cancelled_acquisition_that_succeeds_late_is_released() {
    let (_dir, db) = setup();
    let holder = open_rw(db.lock_path());
    ofd::try_lock(&holder, LockKind::Write, LockRange::HALT).unwrap();

    // Drop the future while the other description holds the lock.
    let dropped = tokio::time::timeout(
        Duration::from_millis(100),
        db.halt_async(Duration::from_secs(10)),
    )
    .await;
    assert!(dropped.is_err(), "must still be waiting: {dropped:?}");

    ofd::unlock(&holder, LockRange::HALT).unwrap();

    // The abandoned lock thread now gets the lock. Had it leaked the guard, the guard would
    // also keep this database's in-process slot, and this bounded HALT would time out.
    let guard = db
        .halt_async(Duration::from_secs(3))
        .await
        .expect("the late acquisition must have been released");
    drop(guard);

    // F_OFD_GETLK from a third description: free shortly after.
    let freed = tokio::time::timeout(Duration::from_secs(2), async {
        while is_locked(db.lock_path()) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(freed.is_ok(), "lock still held after every guard is gone");
    ofd::try_lock(&holder, LockKind::Write, LockRange::HALT).unwrap();
}

#[tokio::test]
async fn halt_async_times_out_against_a_held_lock() {
    let (_dir, db) = setup();
    let holder = open_rw(db.lock_path());
    ofd::try_lock(&holder, LockKind::Write, LockRange::HALT).unwrap();
    let err = db.halt_async(Duration::from_millis(150)).await.unwrap_err();
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
}

#[tokio::test(flavor = "current_thread")]
async fn waiting_for_the_lock_does_not_block_the_only_worker() {
    let (_dir, db) = setup();
    let holder = open_rw(db.lock_path());
    ofd::try_lock(&holder, LockKind::Write, LockRange::HALT).unwrap();

    let ticks = Arc::new(AtomicUsize::new(0));
    let ticker = {
        let ticks = ticks.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(10)).await;
                ticks.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    let halt = tokio::spawn({
        let db = db.clone();
        async move { db.halt_async(Duration::from_secs(5)).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        ticks.load(Ordering::SeqCst) >= 5,
        "the runtime was blocked: {} ticks",
        ticks.load(Ordering::SeqCst)
    );
    assert!(!halt.is_finished());
    drop(holder);
    let guard = halt.await.unwrap().unwrap();
    assert_eq!(guard.kind(), HaltKind::Local);
    ticker.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_serialises_concurrent_halts() {
    let (_dir, db) = setup();
    let inside = Arc::new(AtomicUsize::new(0));
    let max_inside = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (db, inside, max_inside) = (db.clone(), inside.clone(), max_inside.clone());
        tasks.push(tokio::spawn(async move {
            let guard = db.halt_async(Duration::from_secs(8)).await?;
            let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
            max_inside.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(15)).await;
            inside.fetch_sub(1, Ordering::SeqCst);
            guard.release()
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(max_inside.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn second_halt_waits_in_the_process_queue_not_the_kernel() {
    let (_dir, db) = setup();
    let guard = db.halt_async(Duration::from_secs(1)).await.unwrap();
    let err = db.halt_async(Duration::from_millis(100)).await.unwrap_err();
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
    // Sync and async callers share one queue.
    let db2 = db.clone();
    let sync_err = tokio::task::spawn_blocking(move || db2.halt_timeout(Duration::from_millis(50)))
        .await
        .unwrap()
        .unwrap_err();
    assert!(sync_err.is_timeout());
    drop(guard);
    db.halt_async(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test]
async fn guard_moves_into_spawn_blocking() {
    let (_dir, db) = setup();
    let guard = db.halt_async(Duration::from_secs(1)).await.unwrap();
    let lock_path = db.lock_path().to_owned();
    let held = tokio::task::spawn_blocking(move || {
        let held = is_locked(&lock_path) && guard.is_held().unwrap();
        guard.release().map(|()| held)
    })
    .await
    .unwrap()
    .unwrap();
    assert!(held);
    assert!(!is_locked(db.lock_path()));
}

#[tokio::test]
async fn halt_async_on_missing_database_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let db = Mount::open(dir.path())
        .unwrap()
        .database("nope.db")
        .unwrap();
    assert!(matches!(
        db.halt_async(Duration::from_secs(1)).await,
        Err(Error::DatabaseNotFound { .. })
    ));
    assert!(!db.lock_path().exists());
}

#[tokio::test]
async fn wait_for_txid_async_and_watch_pos_follow_the_pos_file() {
    let dir = tempfile::tempdir().unwrap();
    let db = Mount::open(dir.path()).unwrap().database("x.db").unwrap();
    let mut watch = db.watch_pos(Duration::from_millis(5));
    assert!(matches!(
        db.wait_for_txid_async(Txid::new(1), Duration::from_secs(1))
            .await,
        Err(Error::PosUnavailable { .. })
    ));

    std::fs::write(db.pos_path(), "0000000000000001/0000000000000000\n").unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(2), watch.wait_for(|p| p.is_some()))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(seen.txid(), Txid::new(1));

    let pos_path = db.pos_path();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        std::fs::write(pos_path, "0000000000000003/0000000000000000\n").unwrap();
    });
    let pos = db
        .wait_for_txid_async(Txid::new(3), Duration::from_secs(3))
        .await
        .unwrap();
    assert_eq!(pos.txid(), Txid::new(3));
    let seen = tokio::time::timeout(
        Duration::from_secs(2),
        watch.wait_for(|p| p.is_some_and(|p| p.txid() == Txid::new(3))),
    )
    .await
    .unwrap()
    .unwrap()
    .unwrap();
    assert_eq!(seen.txid().get(), 3);

    let err = db
        .wait_for_txid_async(Txid::new(4), Duration::from_millis(50))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::TxidTimeout { current, .. } if current == Txid::new(3)));
}

#[tokio::test]
async fn check_consistency_async_replays_on_a_replica() {
    let dir = tempfile::tempdir().unwrap();
    let db = Mount::open(dir.path()).unwrap().database("x.db").unwrap();
    std::fs::write(db.pos_path(), "0000000000000002/0000000000000000\n").unwrap();
    std::fs::write(dir.path().join(".primary"), "node-p\n").unwrap();
    let c = litefs::check_consistency_async(&db, Txid::new(3), Duration::from_millis(30))
        .await
        .unwrap();
    assert_eq!(c.fly_replay().as_deref(), Some("instance=node-p"));
    let c = litefs::check_consistency_async(&db, Txid::new(2), Duration::ZERO)
        .await
        .unwrap();
    assert!(c.is_current());
}

#[tokio::test]
async fn an_async_guard_carries_the_lease_of_its_database() {
    let (_dir, db) = setup();
    let clock = litefs::ManualClock::new();
    let db = db
        .with_clock(clock.clone())
        .with_halt_lease(Duration::from_secs(3));
    let guard = db.halt_async(Duration::from_secs(1)).await.unwrap();
    assert_eq!(guard.lease(), Some(Duration::from_secs(3)));
    clock.advance(Duration::from_secs(3));
    assert!(matches!(guard.write(|| ()), Err(Error::HaltExpired { .. })));
    drop(guard);
    assert!(!is_locked(db.lock_path()));
}
