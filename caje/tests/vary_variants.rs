//! `Vary` keeps one variant per combination of the named request headers' values: absent and
//! empty are different variants, `Vary: *` is never served from cache, `Accept-Encoding` is
//! normalised (also toward the origin) so equivalent lists share a variant, and at most
//! `cache.max_variants` variants are kept per URL (the oldest is evicted).

mod support;
#[path = "support_ext/mod.rs"]
mod support_ext;

use support::{gen, get, within, Caje, Origin};
use support_ext::body_version;

/// The body's second line, slow_server's echo of the varied request headers.
fn vary_line(r: &support::Resp) -> String {
    r.text().lines().nth(1).unwrap_or_default().to_owned()
}

#[tokio::test]
async fn absent_empty_and_distinct_values_are_four_variants() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "");
        let url = caje.url(&gen("v4", "cc=max-age%3D60&vary=X-Variant"));
        let cases: [(&[(&str, &str)], &str); 4] = [
            (&[], "vary: x-variant=(none)"),
            (&[("X-Variant", "")], "vary: x-variant="),
            (&[("X-Variant", "a")], "vary: x-variant=a"),
            (&[("X-Variant", "b")], "vary: x-variant=b"),
        ];

        for (i, (hs, want)) in cases.iter().enumerate() {
            let r = get(&url, hs).await;
            assert_eq!(r.status, 200, "{}", r.text());
            let cs = r.cache_status();
            assert!(
                !cs.is_hit() && cs.is_stored(),
                "variant {i} ({hs:?}) must be a stored forward, got `{}`",
                cs.raw
            );
            let fwd = if i == 0 { "uri-miss" } else { "vary-miss" };
            assert_eq!(cs.fwd(), Some(fwd), "variant {i} ({hs:?}): `{}`", cs.raw);
            assert_eq!(vary_line(&r).trim_end(), *want, "origin echo for {hs:?}");
            caje.settle_n("/gen/v4", i + 1).await;
        }
        assert_eq!(origin.requests("/gen/v4").await, 4, "one fetch per variant");

        origin.bump("/gen/v4").await;
        for (hs, want) in cases.iter() {
            let r = get(&url, hs).await;
            assert_eq!(r.status, 200);
            r.cache_status().assert_hit();
            assert!(r.age().is_some(), "hit without Age for {hs:?}");
            assert_eq!(
                vary_line(&r).trim_end(),
                *want,
                "{hs:?} was served another variant's body"
            );
            assert_eq!(
                body_version(&r),
                0,
                "{hs:?}: hit must serve the stored version"
            );
        }
        assert_eq!(
            origin.requests("/gen/v4").await,
            4,
            "hits reached the origin"
        );
        assert_eq!(caje.list_entries("/gen/v4").await.len(), 4);
    })
    .await
}

#[tokio::test]
async fn vary_star_is_never_served_from_cache() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "");
        let path = gen("vstar", "cc=max-age%3D60&vary=*");
        for want_version in 0..3u64 {
            let r = caje.get(&path).await;
            assert_eq!(r.status, 200);
            let cs = r.cache_status();
            assert!(!cs.is_hit(), "Vary: * served from cache: `{}`", cs.raw);
            assert_eq!(cs.detail(), Some("vary-star"), "`{}`", cs.raw);
            assert_eq!(body_version(&r), want_version, "stale body for Vary: *");
            origin.bump("/gen/vstar").await;
        }
        assert_eq!(origin.requests("/gen/vstar").await, 3);
        assert!(caje.list_entries("/gen/vstar").await.is_empty());
    })
    .await
}

#[tokio::test]
async fn accept_encoding_lists_share_one_normalised_variant() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "");
        let url = caje.url(&gen("vae", "cc=max-age%3D60&vary=Accept-Encoding"));

        let first = get(&url, &[("Accept-Encoding", "gzip, deflate, br")]).await;
        first.cache_status().assert_fwd("uri-miss", 200, true);
        let seen = origin.last_headers("/gen/vae").await;
        assert_eq!(
            seen.get("accept-encoding").and_then(|v| v.as_str()),
            Some("br, gzip"),
            "the origin must see the normalised Accept-Encoding: {seen:?}"
        );
        assert_eq!(
            vary_line(&first).trim_end(),
            "vary: accept-encoding=br, gzip"
        );
        caje.settle("/gen/vae").await;

        let second = get(&url, &[("Accept-Encoding", "br, gzip")]).await;
        second.cache_status().assert_hit();
        support::assert_same_body(&second.body, &first.body, "br, gzip variant");
        assert_eq!(origin.requests("/gen/vae").await, 1);

        // gzip alone is a different normalised value: a different variant.
        let third = get(&url, &[("Accept-Encoding", "gzip;q=1.0, identity")]).await;
        let cs = third.cache_status();
        assert_eq!(cs.fwd(), Some("vary-miss"), "`{}`", cs.raw);
        let seen = origin.last_headers("/gen/vae").await;
        assert_eq!(
            seen.get("accept-encoding").and_then(|v| v.as_str()),
            Some("gzip"),
            "{seen:?}"
        );
        assert_eq!(origin.requests("/gen/vae").await, 2);
    })
    .await
}

#[tokio::test]
async fn max_variants_evicts_the_oldest_variant() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "[cache]\nmax_variants = 2\n");
        let url = caje.url(&gen("vmax", "cc=max-age%3D60&vary=X-Variant"));
        for (i, v) in ["a", "b", "c"].iter().enumerate() {
            let r = get(&url, &[("X-Variant", v)]).await;
            assert!(
                r.cache_status().is_stored(),
                "{v}: `{}`",
                r.cache_status().raw
            );
            if i < 2 {
                caje.settle_n("/gen/vmax", i + 1).await;
            }
        }
        // The manifest keeps every variant's row (it says what exists in the cluster); this
        // node holds only the two newest. (The listing shows the third row at once now that
        // it is read-your-writes.)
        support::eventually(10, "2 of the 3 listed variants on disk", || async {
            let e = caje.list_entries("/gen/vmax").await;
            let on_disk = |v: &str| {
                e.iter()
                    .any(|e| e["vary"]["x-variant"] == v && e["on_disk"] == true)
            };
            e.len() == 3 && !on_disk("a") && on_disk("b") && on_disk("c")
        })
        .await;
        assert_eq!(origin.requests("/gen/vmax").await, 3);

        for v in ["b", "c"] {
            let r = get(&url, &[("X-Variant", v)]).await;
            r.cache_status().assert_hit();
            assert_eq!(vary_line(&r).trim_end(), format!("vary: x-variant={v}"));
        }
        assert_eq!(origin.requests("/gen/vmax").await, 3);

        // "a" was the oldest: evicted, fetched again.
        let r = get(&url, &[("X-Variant", "a")]).await;
        let cs = r.cache_status();
        assert!(
            !cs.is_hit(),
            "evicted variant served from cache: `{}`",
            cs.raw
        );
        assert_eq!(cs.fwd(), Some("vary-miss"), "`{}`", cs.raw);
        assert_eq!(origin.requests("/gen/vmax").await, 4);
    })
    .await
}
