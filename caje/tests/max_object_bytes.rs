//! Responses larger than `cache.max_object_bytes` pass through complete and are not stored
//! (`detail=too-large`), whether the origin declared a Content-Length or sent chunks.

mod support;

use support::{gen, within, Caje, Origin};

const LIMIT: &str = "[cache]\nmax_object_bytes = 100000\n";

async fn assert_too_large_passes_through(origin: &Origin, caje: &Caje, name: &str, query: &str) {
    let path = gen(name, query);
    let chunked = query.contains("chunked=1");
    for round in 1..=2 {
        let r = caje.get(&path).await;
        assert_eq!(r.status, 200);
        assert_eq!(
            r.body.len(),
            200_000,
            "round {round}: body must pass through complete"
        );
        assert!(r.first_line().starts_with(&format!("path=/gen/{name}")));
        let cs = r.cache_status();
        assert!(
            !cs.is_hit(),
            "round {round}: too-large body served as a hit: `{}`",
            cs.raw
        );
        // Round 2 may be a hit-for-miss (`fwd=miss`): the URL was just found uncacheable.
        let fwd_ok = match round {
            1 => cs.fwd() == Some("uri-miss"),
            _ => matches!(cs.fwd(), Some("uri-miss") | Some("miss")),
        };
        assert!(fwd_ok, "round {round}: `{}`", cs.raw);
        // With a Content-Length caje knows before the head; a chunked body's size is only
        // known at its end, after the head (and its Cache-Status) went out.
        if !chunked {
            cs.assert_not_stored("too-large");
        }
    }
    assert_eq!(origin.requests(&format!("/gen/{name}")).await, 2);
    assert!(caje.list_entries(&format!("/gen/{name}")).await.is_empty());
    assert!(
        caje.stat("not_stored").await + caje.stat("store_failures").await >= 1,
        "the refused fill is not counted: {}",
        caje.stats().await
    );
}

#[tokio::test]
async fn too_large_with_content_length_is_not_stored() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, LIMIT);
        assert_too_large_passes_through(&origin, &caje, "cl", "cc=max-age%3D60&bytes=200000").await;
    })
    .await
}

#[tokio::test]
async fn too_large_chunked_is_not_stored() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, LIMIT);
        assert_too_large_passes_through(
            &origin,
            &caje,
            "ch",
            "cc=max-age%3D60&bytes=200000&chunked=1",
        )
        .await;
    })
    .await
}

#[tokio::test]
async fn below_the_limit_is_stored() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, LIMIT);
        for (name, q) in [
            ("small", "cc=max-age%3D60&bytes=50000"),
            ("smallch", "cc=max-age%3D60&bytes=50000&chunked=1"),
        ] {
            let path = gen(name, q);
            let r = caje.get(&path).await;
            r.cache_status().assert_fwd("uri-miss", 200, true);
            caje.settle(&path).await;
            let hit = caje.get(&path).await;
            hit.cache_status().assert_hit();
            assert_eq!(hit.body.len(), 50_000);
            support::assert_same_body(&hit.body, &r.body, "body");
        }
    })
    .await
}
