//! The store's index at scale: N entries created through the store's own API, the memory the
//! index takes for them, and how soon a store opened on them answers its first hit.
//!
//! ```sh
//! cargo run --release -p caje --example index_bench -- 1000000            # temp dir, removed
//! cargo run --release -p caje --example index_bench -- 1000000 DIR        # DIR kept, reused
//! ```
//!
//! 1. Opens a store in DIR (a new directory under `$TMPDIR` if none is given) and, unless DIR
//!    already holds entries, fills N entries of `BODY` bytes (`INDEX_BENCH_BODY`, default
//!    1024) through `Store::begin_fill`, 64 at a time, like the miss path does. The fills skip
//!    fsync (`OpenOptions::skip_fsync`: 3 million fsyncs would take hours here).
//! 2. Prints the index's heap bytes per entry (`Store::index_memory`: its tables and the
//!    eviction policy's) and the process's RSS, before and after.
//! 3. Writes the index snapshot and drops the store (a clean shutdown), and opens it again:
//!    prints the time until the store is open, the time to its first hit (lookup, metadata
//!    read, body read and checked), and the RSS then; then waits for the background check of
//!    the directory against the snapshot and prints how long it took.
//!
//! Run again on a DIR that holds entries, the process does only step 3, and the times are
//! from the process's start: `INDEX_BENCH_NO_SNAPSHOT=1` removes the snapshot first (the
//! start then scans every entry's header), to compare.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use caje::cache::entry::EntryMeta;
use caje::cache::key::Variant;
use caje::cache::store::{DiskLimits, FillProgress, Lookup, OpenOptions, Store, StoreEvent};
use caje::stats::Stats;
use http_body_util::BodyExt;
use tokio::sync::mpsc;

const HOST: &str = "bench.example";

/// Resident and peak resident set size of this process, in bytes.
fn rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map_or(0, |kib| kib * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

/// The metadata of page `i`, as the miss path builds it for a 200 with a year of max-age.
fn meta(i: u64) -> EntryMeta {
    let path = format!("/p/{i}");
    let req = http::Request::get(&path)
        .header("host", HOST)
        .body(())
        .expect("a valid request")
        .into_parts()
        .0;
    let res = http::Response::builder()
        .header("content-type", "text/plain")
        .header("cache-control", "max-age=31536000")
        .header("etag", format!("\"{i}\""))
        .body(())
        .expect("a valid response")
        .into_parts()
        .0;
    EntryMeta {
        host: HOST.into(),
        path,
        variant: Variant::default(),
        status: 200,
        headers: EntryMeta::headers_from(&res.headers),
        policy: http_cache_semantics::CachePolicy::new(&req, &res),
        body_file: String::new(),
        body_len: 0,
        body_crc32: 0,
        stored_at: SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        tags: Vec::new(),
        invalidated: false,
    }
}

fn open(dir: &std::path::Path) -> Store {
    let (tx, mut rx) = mpsc::unbounded_channel::<StoreEvent>();
    // Nobody follows the events here; drop them as they come (an undrained channel would
    // keep every committed entry alive).
    tokio::spawn(async move { while rx.recv().await.is_some() {} });
    Store::open_with(
        dir,
        8,
        64 << 20,
        DiskLimits::UNLIMITED,
        Arc::new(Stats::default()),
        tx,
        OpenOptions::default(),
    )
    .expect("the store opens")
}

async fn fill_all(store: &Store, n: u64, body: Bytes) {
    let started = Instant::now();
    let permits = Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let permit = permits.clone().acquire_owned().await.expect("never closed");
        let (store, body) = (store.clone(), body.clone());
        tasks.spawn(async move {
            let f = store.begin_fill(meta(i), u64::MAX, true, store.purge_epoch());
            let mut progress = f.progress();
            let mut f = f;
            f.push(&body);
            f.finish();
            let _ = progress
                .wait_for(|p| matches!(p, FillProgress::Committed(..) | FillProgress::Failed))
                .await;
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
        if i > 0 && i % 100_000 == 0 {
            eprintln!("  {i} entries, {:.0} s", started.elapsed().as_secs_f64());
        }
    }
    while tasks.join_next().await.is_some() {}
    println!(
        "filled {n} entries in {:.1} s ({:.0} fills/s)",
        started.elapsed().as_secs_f64(),
        n as f64 / started.elapsed().as_secs_f64()
    );
}

async fn first_hit(store: &Store, i: u64) -> Option<usize> {
    let key = caje::cache::key::CacheKey {
        host: HOST.into(),
        path: format!("/p/{i}"),
    };
    let Lookup::Found(entry) = store.lookup(&key, &http::HeaderMap::new()).await else {
        return None;
    };
    let body = caje::file_body::hit_body(store, &entry.hit).await.ok()?;
    let bytes = body.collect().await.ok()?.to_bytes();
    Some(bytes.len())
}

fn main() {
    let process_start = Instant::now();
    let mut args = std::env::args().skip(1);
    let n: u64 = args
        .next()
        .and_then(|a| a.replace('_', "").parse().ok())
        .unwrap_or(100_000);
    let given = args.next().map(PathBuf::from);
    let body_len: usize = std::env::var("INDEX_BENCH_BODY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let temp = tempfile_dir();
    let dir = given.clone().unwrap_or_else(|| temp.clone());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let _guard = rt.enter();
    let (rss0, _) = rss();
    println!("dir {} ; baseline RSS {}", dir.display(), mib(rss0));

    let reuse = std::fs::read_dir(dir.join("v2")).is_ok_and(|mut d| d.next().is_some());
    if reuse {
        reopen(&rt, &dir, process_start);
        return;
    }
    let store = open(&dir);
    rt.block_on(fill_all(&store, n, Bytes::from(vec![b'x'; body_len])));
    let (entries, _) = store.usage();
    let (heap, _) = store.index_memory();
    let (rss1, hwm1) = rss();
    println!(
        "entries {entries} ; index heap {} = {:.1} bytes/entry ; RSS {} (peak {}) = {:.1} bytes/entry over the baseline",
        mib(heap as u64),
        heap as f64 / entries.max(1) as f64,
        mib(rss1),
        mib(hwm1),
        rss1.saturating_sub(rss0) as f64 / entries.max(1) as f64,
    );
    let started = Instant::now();
    let written = store.write_snapshot(true).expect("the snapshot is written");
    println!(
        "clean shutdown: index snapshot of {written:?} entries written in {:.2} s ({} bytes)",
        started.elapsed().as_secs_f64(),
        std::fs::metadata(dir.join("index.snapshot")).map_or(0, |m| m.len())
    );
    drop(store);
    // The writer threads and the evictor let go of the directory lock within moments.
    std::thread::sleep(Duration::from_millis(500));
    reopen(&rt, &dir, Instant::now());
    if given.is_none() {
        let _ = std::fs::remove_dir_all(&temp);
    }
}

/// Opens the store in `dir` and answers one hit; prints the times from `start`, then waits
/// for the background check (after a start from the snapshot) and writes the snapshot again.
fn reopen(rt: &tokio::runtime::Runtime, dir: &std::path::Path, start: Instant) {
    if std::env::var_os("INDEX_BENCH_NO_SNAPSHOT").is_some() {
        let _ = std::fs::remove_file(dir.join("index.snapshot"));
    }
    let cpu0 = thread_cpu();
    let store = open(dir);
    let opened = start.elapsed();
    let open_cpu = thread_cpu() - cpu0;
    let entries = store.usage().0;
    let hit = rt.block_on(first_hit(&store, entries / 2));
    let first = start.elapsed();
    let (rss2, hwm2) = rss();
    println!(
        "reopen ({}): open {:.3} s ({:.3} s of CPU) ; first hit {:.3} s after start ({:?} bytes) ; entries {} ; RSS {} (peak {})",
        if store.is_checked() { "scanned" } else { "from the snapshot" },
        opened.as_secs_f64(),
        open_cpu.as_secs_f64(),
        first.as_secs_f64(),
        hit,
        entries,
        mib(rss2),
        mib(hwm2),
    );
    if std::env::var_os("INDEX_BENCH_FIRST_HIT_ONLY").is_some() {
        // For profiling the start alone (the check goes on until the process exits).
        std::process::exit(0);
    }
    rt.block_on(store.checked());
    println!(
        "index checked against the directory {:.1} s after start ; entries {} ; RSS {} (peak {})",
        start.elapsed().as_secs_f64(),
        store.usage().0,
        mib(rss().0),
        mib(rss().1),
    );
    let started = Instant::now();
    match store.write_snapshot(true) {
        Ok(n) => println!(
            "clean shutdown: index snapshot of {n:?} entries written in {:.2} s",
            started.elapsed().as_secs_f64()
        ),
        Err(e) => println!("snapshot not written: {e}"),
    }
    drop(store);
}

/// CPU time of the calling thread (the open runs on it: a figure a loaded machine does not
/// inflate, unlike the wall time).
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// A new directory under `$TMPDIR` (not removed on a crash: its path is printed).
fn tempfile_dir() -> PathBuf {
    let base = std::env::var_os("TMPDIR").map_or_else(std::env::temp_dir, PathBuf::from);
    let dir = base.join(format!("caje-index-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temp dir");
    dir
}
