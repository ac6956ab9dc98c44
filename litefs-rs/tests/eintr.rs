//! A signal delivered without SA_RESTART interrupts a blocked F_OFD_SETLKW with EINTR; the
//! wait must be retried, not reported. Own test binary: it installs a process-wide handler.
#![cfg(target_os = "linux")]

use std::fs::OpenOptions;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use litefs::ofd::{self, LockKind, LockRange};
use nix::sys::pthread::{pthread_kill, pthread_self};
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

static SIGNALS: AtomicUsize = AtomicUsize::new(0);

extern "C" fn on_usr1(_: libc::c_int) {
    SIGNALS.fetch_add(1, Ordering::SeqCst);
}

#[test]
fn blocked_setlkw_survives_signals_without_sa_restart() {
    let action = SigAction::new(
        SigHandler::Handler(on_usr1),
        SaFlags::empty(), // no SA_RESTART: the kernel returns EINTR from fcntl
        SigSet::empty(),
    );
    // SAFETY: the handler only touches an atomic, which is async-signal-safe.
    unsafe { sigaction(Signal::SIGUSR1, &action) }.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db-lock");
    let open = || {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .unwrap()
    };
    let holder = open();
    let waiter_file = open();
    ofd::try_lock(&holder, LockKind::Write, LockRange::HALT).unwrap();

    let (tid_tx, tid_rx) = mpsc::channel();
    let (res_tx, res_rx) = mpsc::channel();
    let waiter = std::thread::spawn(move || {
        tid_tx.send(pthread_self()).unwrap();
        let r = ofd::lock_wait(&waiter_file, LockKind::Write, LockRange::HALT);
        res_tx.send(r).unwrap();
    });
    let tid = tid_rx.recv_timeout(Duration::from_secs(5)).unwrap();

    // Give the thread time to block in the kernel, then interrupt it a few times.
    for _ in 0..6 {
        std::thread::sleep(Duration::from_millis(60));
        pthread_kill(tid, Signal::SIGUSR1).unwrap();
    }
    std::thread::sleep(Duration::from_millis(80));
    assert!(
        res_rx.try_recv().is_err(),
        "signals must not end the wait while the lock is held"
    );
    ofd::unlock(&holder, LockRange::HALT).unwrap();

    let acquired = res_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("waiter finished")
        .expect("EINTR must be retried, not reported");
    waiter.join().unwrap();
    assert!(SIGNALS.load(Ordering::SeqCst) >= 3);
    assert!(
        acquired.interrupted() >= 1,
        "the retry loop saw no EINTR: {acquired:?}"
    );
}
