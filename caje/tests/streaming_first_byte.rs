//! A miss streams: the client gets the first body bytes while the origin is still sending,
//! not after caje has buffered the whole body.

mod support;

use std::time::{Duration, Instant};

use support::http::open;
use support::{gen, within, Caje, Origin};

#[tokio::test]
async fn first_body_bytes_arrive_before_the_origin_finishes() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "");
        // 20 chunks of 1000 bytes, 100 ms apart: the origin needs about 2 s for the body.
        let path = gen(
            "s",
            "cc=max-age%3D60&bytes=20000&chunk_bytes=1000&stream_delay_ms=100",
        );

        let mut resp = open("GET", &caje.url(&path), &[], b"")
            .await
            .expect("response head");
        assert_eq!(resp.status, 200);
        let sent = resp.sent_at;
        let first = resp
            .chunk()
            .await
            .expect("body")
            .expect("a first body chunk");
        let first_at = Instant::now();
        let mut total = first.len() as u64;
        while let Some(c) = resp.chunk().await.expect("body completes") {
            total += c.len() as u64;
        }
        let done_at = Instant::now();

        assert_eq!(total, 20_000);
        let ttfb = first_at - sent;
        let whole = done_at - sent;
        assert!(
            whole >= Duration::from_millis(1500),
            "origin was expected to take ~2 s to stream, took {whole:?}"
        );
        assert!(
            ttfb < Duration::from_secs(1),
            "first body byte after {ttfb:?} of {whole:?}: caje buffered the body"
        );

        // And the streamed body was stored whole.
        caje.settle(&path).await;
        let hit = caje.get(&path).await;
        hit.cache_status().assert_hit();
        assert_eq!(hit.body.len(), 20_000);
    })
    .await
}
