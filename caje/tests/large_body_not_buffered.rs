//! A 200 MB body goes through caje without caje holding it in memory: caje's peak RSS stays
//! far below the body size while the miss streams to the client (and into the cache).

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::http::open;
use support::{gen, rss_kib, within, Caje, Origin};

const BODY: u64 = 200 * 1024 * 1024;
/// caje's peak resident set must stay under this (half the body size).
const RSS_LIMIT_KIB: u64 = 100 * 1024;

#[tokio::test]
async fn two_hundred_mb_miss_streams_without_buffering() {
    within(120, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "");
        let pid = caje.pid();
        let path = gen("big", &format!("cc=max-age%3D600&bytes={BODY}"));

        // Sample caje's RSS while the transfer runs (VmHWM below catches any peak between
        // samples).
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let sampler = {
            let (stop, peak) = (stop.clone(), peak.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Some((rss, _)) = rss_kib(pid) {
                        peak.fetch_max(rss, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        };

        let resp = open("GET", &caje.url(&path), &[], b"").await.expect("head");
        assert_eq!(resp.status, 200);
        assert_eq!(resp.cache_status().fwd(), Some("uri-miss"));
        let (len, head) = resp.drain(64).await.expect("complete body");
        assert_eq!(len, BODY, "miss body length");
        assert!(
            head.starts_with(b"path=/gen/big"),
            "{:?}",
            String::from_utf8_lossy(&head)
        );

        stop.store(true, Ordering::Relaxed);
        sampler.join().unwrap();
        let (_, hwm) = rss_kib(pid).expect("caje is still running");
        let sampled = peak.load(Ordering::Relaxed);
        assert!(
            hwm < RSS_LIMIT_KIB && sampled < RSS_LIMIT_KIB,
            "caje's memory grew with the body: VmHWM {hwm} KiB, sampled peak VmRSS {sampled} KiB \
             (limit {RSS_LIMIT_KIB} KiB for a {BODY}-byte body)"
        );
        assert_eq!(origin.requests("/gen/big").await, 1);
    })
    .await
}
