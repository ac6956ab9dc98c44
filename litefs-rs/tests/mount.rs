//! `Mount` / `Database` on a fake mount directory whose LiteFS files are written by the test.

use std::time::{Duration, Instant};

use litefs::{check_consistency, Consistency, Error, Mount, Pos, Role, Txid};

const POS_5: &str = "0000000000000005/00000000000000aa\n";

#[test]
fn plain_directory_is_its_own_primary_unless_primary_file_exists() {
    let dir = tempfile::tempdir().unwrap();
    let mount = Mount::open(dir.path()).unwrap();
    assert!(!mount.is_litefs());
    assert!(!mount.is_fuse_mount());
    assert_eq!(mount.role().unwrap(), Role::Primary);
    assert!(mount.is_primary().unwrap());
    assert_eq!(mount.primary().unwrap(), None);
    assert_eq!(mount.lag().unwrap(), None);

    // A plain directory ignores `.lag` for the role: only `.primary` simulates a replica.
    std::fs::write(dir.path().join(".lag"), "+000001000\n").unwrap();
    assert_eq!(mount.role().unwrap(), Role::Primary);

    std::fs::write(dir.path().join(".primary"), "node-a\n").unwrap();
    assert_eq!(mount.primary().unwrap().as_deref(), Some("node-a"));
    assert_eq!(
        mount.role().unwrap(),
        Role::Replica {
            primary: "node-a".into()
        }
    );
}

#[test]
fn forced_litefs_mount_uses_lag_to_tell_primary_from_disconnected_replica() {
    let dir = tempfile::tempdir().unwrap();
    let mount = Mount::open_as_litefs(dir.path()).unwrap();
    assert!(mount.is_litefs());
    assert!(!mount.is_fuse_mount());
    // No `.lag` at all (a simulated mount): own primary.
    assert_eq!(mount.role().unwrap(), Role::Primary);

    std::fs::write(dir.path().join(".lag"), "+000000000\n").unwrap();
    assert_eq!(mount.role().unwrap(), Role::Primary);
    for lag in ["+2147483647\n", "+000004321\n", "-000000007\n"] {
        std::fs::write(dir.path().join(".lag"), lag).unwrap();
        assert_eq!(mount.role().unwrap(), Role::Unknown, "{lag:?}");
    }
    std::fs::write(dir.path().join(".primary"), "node-b\n").unwrap();
    assert_eq!(mount.role().unwrap().primary_hostname(), Some("node-b"));

    // An empty `.primary` names nobody.
    std::fs::write(dir.path().join(".primary"), "\n").unwrap();
    assert_eq!(mount.primary().unwrap(), None);
}

#[test]
fn lag_file_is_parsed_including_extremes() {
    let dir = tempfile::tempdir().unwrap();
    let mount = Mount::open(dir.path()).unwrap();
    std::fs::write(dir.path().join(".lag"), "+2147483647\n").unwrap();
    let lag = mount.lag().unwrap().unwrap();
    assert!(lag.is_never_replicated());
    assert_eq!(lag.duration(), None);
    std::fs::write(dir.path().join(".lag"), "-000000012\n").unwrap();
    assert_eq!(mount.lag().unwrap().unwrap().millis(), -12);
    std::fs::write(dir.path().join(".lag"), "soon\n").unwrap();
    assert!(matches!(mount.lag(), Err(Error::Parse(e)) if e.what() == ".lag"));
}

#[test]
fn open_rejects_missing_paths_and_files() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        Mount::open(dir.path().join("missing")),
        Err(Error::Io { op: "open", .. })
    ));
    let file = dir.path().join("file");
    std::fs::write(&file, b"").unwrap();
    assert!(Mount::open(&file).is_err());
}

#[test]
fn root_filesystem_is_not_a_litefs_mount() {
    // Exercises the real /proc/self/mountinfo parser on this machine.
    let mount = Mount::open("/").unwrap();
    assert!(!mount.is_fuse_mount());
}

#[test]
fn from_env_reads_litefs_dir() {
    // The only test in this binary that touches the environment.
    let dir = tempfile::tempdir().unwrap();
    std::env::set_var(litefs::DIR_ENV, dir.path());
    let mount = Mount::from_env().unwrap();
    std::env::remove_var(litefs::DIR_ENV);
    assert_eq!(mount.path(), dir.path().canonicalize().unwrap());
}

#[test]
fn database_names_are_validated() {
    let dir = tempfile::tempdir().unwrap();
    let mount = Mount::open(dir.path()).unwrap();
    for bad in ["", ".primary", "a/b.db", "../x.db", "nul\0.db"] {
        assert!(
            matches!(mount.database(bad), Err(Error::InvalidDatabaseName { .. })),
            "{bad:?}"
        );
    }
    let db = mount.database("caje.db").unwrap();
    assert_eq!(db.path(), mount.path().join("caje.db"));
    assert_eq!(db.wal_path(), mount.path().join("caje.db-wal"));
    assert_eq!(db.shm_path(), mount.path().join("caje.db-shm"));
    assert_eq!(db.journal_path(), mount.path().join("caje.db-journal"));
    assert_eq!(db.lock_path(), mount.path().join("caje.db-lock"));
}

#[test]
fn databases_lists_sqlite_files_and_pos_owners_only() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::write(p.join("a.db"), b"SQLite format 3\0more").unwrap();
    std::fs::write(p.join("a.db-wal"), b"").unwrap();
    std::fs::write(p.join("a.db-shm"), b"").unwrap();
    std::fs::write(p.join("b.db"), b"").unwrap();
    std::fs::write(p.join("b.db-pos"), POS_5).unwrap();
    std::fs::write(p.join("notes.txt"), b"hello").unwrap();
    std::fs::write(p.join(".primary"), b"node\n").unwrap();
    std::fs::create_dir(p.join("sub.db")).unwrap();
    let names: Vec<String> = Mount::open(p)
        .unwrap()
        .databases()
        .unwrap()
        .iter()
        .map(|d| d.name().to_owned())
        .collect();
    assert_eq!(names, ["a.db", "b.db"]);
}

#[test]
fn pos_and_txid_come_from_the_pos_file() {
    let dir = tempfile::tempdir().unwrap();
    let db = Mount::open(dir.path()).unwrap().database("x.db").unwrap();
    assert!(matches!(db.pos(), Err(Error::PosUnavailable { path }) if path == db.pos_path()));
    assert!(matches!(db.txid(), Err(Error::PosUnavailable { .. })));

    std::fs::write(db.pos_path(), "00000000002df417/ce552e44f23fbbdd\n").unwrap();
    assert_eq!(
        db.pos().unwrap(),
        Pos::new(Txid::new(0x2df417), 0xce552e44f23fbbdd)
    );
    assert_eq!(db.txid().unwrap(), Txid::new(0x2df417));

    std::fs::write(db.pos_path(), "garbage\n").unwrap();
    assert!(matches!(db.pos(), Err(Error::Parse(e)) if e.what() == "-pos"));
}

#[test]
fn wait_for_txid_returns_when_replication_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let db = Mount::open(dir.path()).unwrap().database("x.db").unwrap();
    std::fs::write(db.pos_path(), POS_5).unwrap();
    let pos_path = db.pos_path();
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        std::fs::write(pos_path, "0000000000000007/00000000000000bb\n").unwrap();
    });
    let start = Instant::now();
    let pos = db
        .wait_for_txid(Txid::new(6), Duration::from_secs(5))
        .unwrap();
    assert_eq!(pos.txid(), Txid::new(7));
    assert!(start.elapsed() >= Duration::from_millis(90));
    assert!(start.elapsed() < Duration::from_secs(2));
    writer.join().unwrap();
}

#[test]
fn wait_for_txid_times_out_with_the_current_txid() {
    let dir = tempfile::tempdir().unwrap();
    let db = Mount::open(dir.path()).unwrap().database("x.db").unwrap();
    std::fs::write(db.pos_path(), POS_5).unwrap();
    let start = Instant::now();
    match db.wait_for_txid(Txid::new(9), Duration::from_millis(120)) {
        Err(Error::TxidTimeout {
            wanted, current, ..
        }) => {
            assert_eq!((wanted, current), (Txid::new(9), Txid::new(5)));
        }
        other => panic!("{other:?}"),
    }
    let elapsed = start.elapsed();
    assert!(elapsed >= Duration::from_millis(120) && elapsed < Duration::from_secs(2));
}

#[test]
fn wait_for_txid_without_pos_fails_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = Mount::open(dir.path()).unwrap().database("x.db").unwrap();
    let start = Instant::now();
    assert!(matches!(
        db.wait_for_txid(Txid::new(1), Duration::from_secs(5)),
        Err(Error::PosUnavailable { .. })
    ));
    assert!(start.elapsed() < Duration::from_secs(1));
}

#[test]
fn check_consistency_waits_then_replays_on_the_primary() {
    let dir = tempfile::tempdir().unwrap();
    let mount = Mount::open_as_litefs(dir.path()).unwrap();
    let db = mount.database("x.db").unwrap();
    std::fs::write(db.pos_path(), POS_5).unwrap();
    std::fs::write(dir.path().join(".primary"), "node-a\n").unwrap();

    assert_eq!(
        check_consistency(&db, Txid::new(4), Duration::ZERO).unwrap(),
        Consistency::Current { txid: Txid::new(5) }
    );
    let replay = check_consistency(&db, Txid::new(8), Duration::from_millis(50)).unwrap();
    assert_eq!(
        replay,
        Consistency::Replay {
            primary: "node-a".into(),
            txid: Txid::new(5)
        }
    );
    assert_eq!(replay.fly_replay().as_deref(), Some("instance=node-a"));

    // Replication arriving during the wait makes the node current.
    let pos_path = db.pos_path();
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        std::fs::write(pos_path, "0000000000000008/0000000000000000\n").unwrap();
    });
    assert_eq!(
        check_consistency(&db, Txid::new(8), Duration::from_secs(3)).unwrap(),
        Consistency::Current { txid: Txid::new(8) }
    );
    writer.join().unwrap();
}

#[test]
fn check_consistency_on_primary_or_without_primary_is_behind() {
    let dir = tempfile::tempdir().unwrap();
    let mount = Mount::open_as_litefs(dir.path()).unwrap();
    let db = mount.database("x.db").unwrap();
    std::fs::write(db.pos_path(), POS_5).unwrap();

    // Primary: waiting cannot help, so no wait at all.
    let start = Instant::now();
    let c = check_consistency(&db, Txid::new(6), Duration::from_secs(5)).unwrap();
    assert_eq!(
        c,
        Consistency::Behind {
            txid: Txid::new(5),
            role: Role::Primary
        }
    );
    assert!(start.elapsed() < Duration::from_secs(1));

    // Disconnected replica: nobody to replay to.
    std::fs::write(dir.path().join(".lag"), "+000009000\n").unwrap();
    let c = check_consistency(&db, Txid::new(6), Duration::from_millis(30)).unwrap();
    assert_eq!(
        c,
        Consistency::Behind {
            txid: Txid::new(5),
            role: Role::Unknown
        }
    );
    assert_eq!(c.fly_replay(), None);
}
