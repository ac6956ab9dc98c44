//! Prints this node's LiteFS status and, if asked, performs one write under HALT.
//!
//! ```text
//! # on a LiteFS node (LITEFS_DIR defaults to /litefs):
//! cargo run --example status                 # role, lag, TXID of every database
//! cargo run --example status -- app.db       # ... then one write to app.db under HALT
//! ```
//!
//! The write creates (if needed) a table `litefs_rs_example` in the database and inserts one
//! row. The database must already exist; on a replica the write goes through HALT, on the
//! primary HALT is a no-op, on a plain directory it is a local lock.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use litefs::{Error, Mount};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mount = Mount::from_env()?;
    println!("mount:     {}", mount.path().display());
    println!(
        "litefs:    {}",
        if mount.is_fuse_mount() {
            "yes (FUSE mount)"
        } else {
            "no (plain directory: this node is its own primary)"
        }
    );
    println!("role:      {}", mount.role()?);
    match mount.lag()? {
        Some(lag) if lag.is_never_replicated() => println!("lag:       not replicated yet"),
        Some(lag) => println!("lag:       {} ms", lag.millis()),
        None => println!("lag:       n/a"),
    }
    for db in mount.databases()? {
        match db.pos() {
            Ok(pos) => println!("database:  {} at TXID {} ({pos})", db.name(), pos.txid()),
            Err(Error::PosUnavailable { .. }) => println!("database:  {} (no -pos)", db.name()),
            Err(e) => println!("database:  {}: {e}", db.name()),
        }
    }

    let Some(name) = std::env::args().nth(1) else {
        return Ok(());
    };
    let db = mount.database(&name)?;
    let mut conn = rusqlite::Connection::open_with_flags(
        db.path(),
        // Never create the database here: on a replica that cannot work.
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE,
    )?;
    // While a replica holds HALT the primary's writers wait; leave them room.
    conn.busy_timeout(Duration::from_secs(5))?;

    let started = std::time::Instant::now();
    // HALT before BEGIN; bounded a little above LiteFS's own 10 s acquisition limit.
    let halt = db.halt_timeout(litefs::HALT_ACQUIRE_LIMIT + Duration::from_secs(2))?;
    let acquired = started.elapsed();
    let tx = conn.transaction()?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS litefs_rs_example (written_at INTEGER NOT NULL, kind TEXT NOT NULL)",
    )?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() as i64;
    tx.execute(
        "INSERT INTO litefs_rs_example (written_at, kind) VALUES (?1, ?2)",
        rusqlite::params![now, format!("{:?}", halt.kind())],
    )?;
    tx.commit()?;
    let kind = halt.kind();
    halt.release()?;
    println!(
        "write:     one row into {name} under a {kind:?} HALT (acquired in {acquired:?}, total {:?})",
        started.elapsed()
    );
    if let Ok(pos) = db.pos() {
        println!("database:  {name} now at TXID {}", pos.txid());
    }
    Ok(())
}
