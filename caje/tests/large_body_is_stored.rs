//! A 200 MB body below `max_object_bytes` is stored while it streams to a fast client, and the
//! next request is a hit with the full length (served from disk, still without buffering).

mod support;

use support::http::open;
use support::{gen, rss_kib, within, Caje, Origin};

const BODY: u64 = 200 * 1024 * 1024;
const RSS_LIMIT_KIB: u64 = 100 * 1024;

#[tokio::test]
async fn two_hundred_mb_body_is_stored_and_served_as_a_hit() {
    within(120, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "");
        let path = gen("big", &format!("cc=max-age%3D600&bytes={BODY}"));

        let miss = open("GET", &caje.url(&path), &[], b"").await.expect("head");
        miss.cache_status().assert_fwd("uri-miss", 200, true);
        let (len, head) = miss.drain(64).await.expect("complete body");
        assert_eq!(len, BODY);
        caje.settle(&path).await;

        let hit = open("GET", &caje.url(&path), &[], b"").await.expect("head");
        assert_eq!(hit.status, 200);
        hit.cache_status().assert_hit();
        assert_eq!(hit.content_length(), Some(BODY));
        let (hit_len, hit_head) = hit.drain(64).await.expect("complete hit body");
        assert_eq!(hit_len, BODY, "hit body length");
        assert_eq!(hit_head, head);
        assert_eq!(origin.requests("/gen/big").await, 1);

        let (_, hwm) = rss_kib(caje.pid()).expect("caje is still running");
        assert!(hwm < RSS_LIMIT_KIB, "caje's peak RSS {hwm} KiB");
    })
    .await
}
