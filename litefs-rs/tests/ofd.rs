//! Real OFD locks on real files: conflicts between open file descriptions of one process.
#![cfg(target_os = "linux")]

use std::fs::{File, OpenOptions};
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use litefs::ofd::{self, LockError, LockKind, LockRange, OfdCommand};

fn open_rw(path: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .unwrap()
}

#[test]
fn second_description_gets_eagain_and_sees_holder_with_pid_minus_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db-lock");
    let a = open_rw(&path);
    let b = open_rw(&path);

    ofd::try_lock(&a, LockKind::Write, LockRange::HALT).unwrap();
    assert_eq!(
        ofd::try_lock(&b, LockKind::Write, LockRange::HALT),
        Err(LockError::WouldBlock)
    );
    let holder = ofd::query(&b, LockKind::Write, LockRange::HALT)
        .unwrap()
        .expect("b must see a's lock");
    assert_eq!(holder.kind(), LockKind::Write);
    assert_eq!(holder.range(), LockRange::HALT);
    assert_eq!(holder.pid(), -1, "OFD holders are reported with pid -1");

    // The holder's own description never conflicts with itself on a plain file.
    assert_eq!(
        ofd::query(&a, LockKind::Write, LockRange::HALT).unwrap(),
        None
    );
    // Byte 73 is not covered by the HALT byte.
    let c = open_rw(&path);
    assert_eq!(
        ofd::query(&c, LockKind::Write, LockRange::new(73, 1)).unwrap(),
        None
    );
    ofd::try_lock(&b, LockKind::Write, LockRange::new(73, 1)).unwrap();
}

#[test]
fn unlock_and_close_each_release_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db-lock");
    let a = open_rw(&path);
    let probe = open_rw(&path);

    ofd::try_lock(&a, LockKind::Write, LockRange::HALT).unwrap();
    ofd::unlock(&a, LockRange::HALT).unwrap();
    assert_eq!(
        ofd::query(&probe, LockKind::Write, LockRange::HALT).unwrap(),
        None
    );

    ofd::try_lock(&a, LockKind::Write, LockRange::HALT).unwrap();
    assert!(ofd::query(&probe, LockKind::Write, LockRange::HALT)
        .unwrap()
        .is_some());
    drop(a);
    assert_eq!(
        ofd::query(&probe, LockKind::Write, LockRange::HALT).unwrap(),
        None
    );
}

#[test]
fn read_locks_share_and_exclude_writers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db-lock");
    let a = open_rw(&path);
    let b = open_rw(&path);
    ofd::try_lock(&a, LockKind::Read, LockRange::HALT).unwrap();
    ofd::try_lock(&b, LockKind::Read, LockRange::HALT).unwrap();
    let c = open_rw(&path);
    assert_eq!(
        ofd::try_lock(&c, LockKind::Write, LockRange::HALT),
        Err(LockError::WouldBlock)
    );
    let holder = ofd::query(&c, LockKind::Write, LockRange::HALT)
        .unwrap()
        .unwrap();
    assert_eq!(holder.kind(), LockKind::Read);
}

#[test]
fn nonzero_l_pid_is_rejected_with_einval() {
    let dir = tempfile::tempdir().unwrap();
    let f = open_rw(&dir.path().join("db-lock"));
    for cmd in [OfdCommand::SetLock, OfdCommand::GetLock] {
        // SAFETY: all-zero is a valid `struct flock`.
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        fl.l_type = libc::F_WRLCK as _;
        fl.l_whence = libc::SEEK_SET as _;
        fl.l_start = 72;
        fl.l_len = 1;
        fl.l_pid = std::process::id() as _;
        assert_eq!(
            ofd::fcntl_raw(&f, cmd, &mut fl),
            Err(LockError::InvalidArgument),
            "{cmd:?}"
        );
        fl.l_pid = 0;
        assert_eq!(ofd::fcntl_raw(&f, cmd, &mut fl), Ok(0), "{cmd:?}");
    }
}

#[test]
fn write_lock_on_read_only_descriptor_is_ebadf() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db-lock");
    drop(open_rw(&path));
    let ro = File::open(&path).unwrap();
    let err = ofd::try_lock(&ro, LockKind::Write, LockRange::HALT).unwrap_err();
    assert_eq!(err, LockError::BadDescriptor);
    assert_eq!(err.errno(), Some(libc::EBADF));
    assert!(!err.is_retryable());
}

#[test]
fn lock_wait_blocks_until_the_holder_releases() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db-lock");
    let a = open_rw(&path);
    let b = open_rw(&path);
    ofd::try_lock(&a, LockKind::Write, LockRange::HALT).unwrap();

    let (tx, rx) = mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let r = ofd::lock_wait(&b, LockKind::Write, LockRange::HALT);
        tx.send(r).unwrap();
        b // keep the description (and its lock) alive until joined
    });
    assert!(
        rx.recv_timeout(Duration::from_millis(150)).is_err(),
        "must block while a holds the lock"
    );
    ofd::unlock(&a, LockRange::HALT).unwrap();
    let acquired = rx.recv_timeout(Duration::from_secs(5)).unwrap().unwrap();
    assert_eq!(acquired.interrupted(), 0);
    let b = waiter.join().unwrap();
    assert_eq!(
        ofd::try_lock(&a, LockKind::Write, LockRange::HALT),
        Err(LockError::WouldBlock)
    );
    drop(b);
}

#[test]
fn errno_mapping_matches_litefs_table() {
    let table = [
        (libc::EAGAIN, LockError::WouldBlock, true),
        (libc::ENOSYS, LockError::NotSupported, false),
        (libc::EINVAL, LockError::InvalidArgument, false),
        (libc::ENOLCK, LockError::AlreadyHeld, false),
        (libc::EIO, LockError::Io, true),
        (libc::ENOENT, LockError::NotFound, false),
        (libc::EPERM, LockError::Os(libc::EPERM), false),
    ];
    for (errno, expected, retryable) in table {
        let e = LockError::from_errno(errno);
        assert_eq!(e, expected);
        assert_eq!(e.errno(), Some(errno));
        assert_eq!(e.is_retryable(), retryable, "{e:?}");
    }
}
