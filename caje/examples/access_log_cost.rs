//! The access log's own cost per line, apart from HTTP: what logging a cached hit's line adds
//! to that request's CPU time.
//!
//! Run with `taskset -c 0 cargo run --release -p caje --example access_log_cost` (a few
//! seconds; `taskset -c 0` puts the writer thread on the logging thread's core, as
//! `scripts/bench-ops.sh` pins caje). It logs the line of a 1 KiB hit (the one
//! `scripts/bench-ops.sh` requests) `LINES` times from `THREADS` threads to a file in a temp
//! dir (pausing, off the clock, whenever more than 32,768 lines wait for the writer, so that
//! none is dropped: a dropped line costs less than a written one), flushes, and prints:
//! - `call`: CPU time of one `AccessLog::log` call on a request thread (the thread's own
//!   clock, which preemption by other work does not advance);
//! - `cpu`: the whole process's CPU time (user + system, the writer thread's `write(2)`s
//!   included) per line, from `getrusage` around the logging and the flush.
//!
//! Divide `cpu` by a hit's CPU time in `scripts/bench-ops.sh` (`cpu_us_per_req` of the `off`
//! mode) for the log's share of a hit. This figure hardly depends on what else the machine
//! runs, unlike hits per second.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use caje::access_log::{AccessLog, Line, Target};

const LINES: u64 = 2_000_000;
const THREADS: u64 = 2;

fn cpu_time() -> Duration {
    // SAFETY: getrusage fills the struct it is given; RUSAGE_SELF counts every thread.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn thread_cpu_time() -> Duration {
    // SAFETY: clock_gettime fills the timespec it is given.
    let ts = unsafe {
        let mut ts: libc::timespec = std::mem::zeroed();
        libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts);
        ts
    };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// More lines wait for the writer than the example's pacing allows.
fn log_behind(log: &AccessLog, logged: &AtomicU64) -> bool {
    logged.load(Ordering::Relaxed) > log.written() + 32_768
}

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("access.log");
    let log = AccessLog::start(
        Target::File(path.clone()),
        1 << 20,
        Duration::from_millis(100),
    )
    .expect("opening the log");
    let client = "127.0.0.1:54464".parse().unwrap();
    let cpu0 = cpu_time();
    let wall0 = Instant::now();
    let logged = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..THREADS)
        .map(|_| {
            let log = log.clone();
            let logged = logged.clone();
            std::thread::spawn(move || {
                let mut calls = Duration::ZERO;
                for _ in 0..LINES / THREADS / 1000 {
                    while log_behind(&log, &logged) {
                        std::thread::sleep(Duration::from_micros(200));
                    }
                    let start = thread_cpu_time();
                    for _ in 0..1000 {
                        log.log(&Line {
                            time: SystemTime::now(),
                            client,
                            method: "GET",
                            host: "127.0.0.1:8080",
                            path: "/gen/bench?cc=max-age%3D3600&bytes=1024",
                            status: 200,
                            bytes: 1024,
                            duration: Duration::from_micros(187),
                            origin: None,
                            cache: "hit",
                            cache_status: Some("caje; hit; ttl=3599"),
                            origin_addr: None,
                        });
                    }
                    calls += thread_cpu_time() - start;
                    logged.fetch_add(1000, Ordering::Relaxed);
                }
                calls
            })
        })
        .collect();
    let call: Duration = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(log.flush(Duration::from_secs(60)), "flush timed out");
    let cpu = cpu_time() - cpu0;
    let wall = wall0.elapsed();
    let bytes = std::fs::metadata(&path).map_or(0, |m| m.len());
    assert_eq!(log.written(), LINES, "dropped: {}", log.dropped());
    let ns = |d: Duration| d.as_nanos() as f64 / LINES as f64;
    println!(
        "{LINES} lines from {THREADS} threads, {:.1} MB, {:.2} s wall, dropped {}",
        bytes as f64 / 1e6,
        wall.as_secs_f64(),
        log.dropped()
    );
    println!("call: {:.0} ns CPU per log() on a request thread", ns(call));
    println!(
        "cpu:  {:.0} ns per line, the whole process (writer included)",
        ns(cpu)
    );
}
