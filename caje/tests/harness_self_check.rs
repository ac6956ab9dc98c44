//! Checks the harness itself against slow_server directly (no caje): the client must see a
//! cut body as an error, decode chunked bodies, and stream. Without this, a test such as
//! `aborted_body_not_stored` could pass because the client could not tell the difference.

mod support;

use std::time::{Duration, Instant};

use support::http::{open, try_request, ClientError};
use support::{gen, get, within, Origin};

#[tokio::test]
async fn client_reports_a_cut_body_as_incomplete() {
    within(20, async {
        let origin = Origin::start();
        let r = try_request(
            "GET",
            &origin.url(&gen("cut", "bytes=100000&abort_after=1000")),
            &[],
            b"",
        )
        .await;
        match r {
            Err(ClientError::Incomplete { status, got, .. }) => {
                assert_eq!(status, 200);
                assert_eq!(got.len(), 1000);
            }
            other => panic!("expected an incomplete body, got {other:?}"),
        }
    })
    .await
}

#[tokio::test]
async fn client_reads_fixed_and_chunked_bodies() {
    within(20, async {
        let origin = Origin::start();
        let fixed = get(&origin.url(&gen("f", "bytes=150000")), &[]).await;
        assert_eq!(fixed.body.len(), 150_000);
        assert!(fixed.header("content-length").is_some());
        let chunked = get(&origin.url(&gen("f", "bytes=150000&chunked=1")), &[]).await;
        assert_eq!(chunked.body.len(), 150_000);
        assert!(chunked.header("transfer-encoding").is_some());
        let again = get(&origin.url(&gen("f", "bytes=150000")), &[]).await;
        support::assert_same_body(
            &again.body,
            &fixed.body,
            "generated bodies are deterministic",
        );
        assert_eq!(origin.requests("/gen/f").await, 3);
        assert_eq!(
            fixed.first_line(),
            format!("path=/gen/f?bytes=150000 version=0")
        );
    })
    .await
}

#[tokio::test]
async fn client_sees_the_first_chunk_early() {
    within(20, async {
        let origin = Origin::start();
        let url = origin.url(&gen(
            "s",
            "bytes=10000&chunk_bytes=1000&stream_delay_ms=100",
        ));
        let mut s = open("GET", &url, &[], b"").await.unwrap();
        s.chunk().await.unwrap().unwrap();
        let first = s.sent_at.elapsed();
        let start = Instant::now();
        let (rest, _) = s.drain(0).await.unwrap();
        assert!(rest > 0);
        assert!(first < Duration::from_millis(500), "{first:?}");
        assert!(start.elapsed() > Duration::from_millis(500));
    })
    .await
}
