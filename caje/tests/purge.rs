//! Purge: `POST /_caje/purge?url=` removes every Vary variant of a URL from disk and the
//! manifest (`&soft=true` marks them stale for revalidation instead); `?tag=` does the same for
//! the entries whose `Surrogate-Key` carried the tag; `PURGE /path` is the HTTP-method form,
//! behind the same admin auth.

mod support;
#[path = "support_ext/mod.rs"]
mod support_ext;

use support::{gen, get, request, within, Caje, CajeConfig, Origin};
use support_ext::{body_version, enc};

/// The next GET of `path` goes to the origin and gets `version`.
#[track_caller]
fn assert_refetched(r: &support::Resp, version: u64, what: &str) {
    assert_forwarded(r, "uri-miss", version, what);
}

/// `r` went to the origin (`fwd=<fwd>`) and got `version`.
#[track_caller]
fn assert_forwarded(r: &support::Resp, fwd: &str, version: u64, what: &str) {
    let cs = r.cache_status();
    assert!(
        !cs.is_hit() && cs.fwd() == Some(fwd) && cs.fwd_status() == Some(200),
        "{what}: expected `fwd={fwd}` after the purge, got `{}`",
        cs.raw
    );
    assert_eq!(body_version(r), version, "{what}: purged body served");
}

#[tokio::test]
async fn purge_by_path_removes_every_variant() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "");
        let path = gen("pv", "cc=max-age%3D60&vary=X-Variant");
        let other = gen("pv", "cc=max-age%3D60&vary=X-Variant&x=other");
        let url = caje.url(&path);
        for v in ["a", "b"] {
            get(&url, &[("X-Variant", v)]).await;
        }
        caje.store(&other).await;
        caje.settle_n("/gen/pv", 3).await;
        let files_before = support::files_under(&caje.cache_dir()).len();
        origin.bump("/gen/pv").await;

        let r = caje
            .admin("POST", &format!("/_caje/purge?url={}", enc(&path)))
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let j = r.json();
        assert_eq!(j["entries"], 2, "both variants: {j}");
        assert!(j["rows"].as_u64().is_some_and(|n| n >= 2), "{j}");
        assert_eq!(j["soft"], false, "{j}");

        let left = caje.list_entries("/gen/pv").await;
        assert_eq!(left.len(), 1, "only the other URL stays listed: {left:?}");
        assert_eq!(left[0]["path"].as_str(), Some(other.as_str()));
        let files_after = support::files_under(&caje.cache_dir()).len();
        assert!(
            files_after < files_before,
            "no cache file removed ({files_before} before, {files_after} after)"
        );

        let r = get(&url, &[("X-Variant", "a")]).await;
        assert_refetched(&r, 1, "variant a");
        caje.settle_n("/gen/pv", 2).await;
        let r = get(&url, &[("X-Variant", "b")]).await;
        assert_forwarded(&r, "vary-miss", 1, "variant b");
        caje.get(&other).await.cache_status().assert_hit();
        assert_eq!(origin.requests("/gen/pv").await, 5);
    })
    .await
}

#[tokio::test]
async fn purge_by_absolute_url() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "");
        let path = gen("pabs", "cc=max-age%3D60");
        caje.store(&path).await;
        let r = caje
            .admin(
                "POST",
                &format!("/_caje/purge?url={}", enc(&caje.url(&path))),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["entries"], 1, "{}", r.text());
        assert!(caje.list_entries("/gen/pabs").await.is_empty());
        assert_refetched(&caje.get(&path).await, 0, "absolute purge");
        assert_eq!(origin.requests("/gen/pabs").await, 2);
    })
    .await
}

#[tokio::test]
async fn soft_purge_marks_stale_and_the_next_request_revalidates() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "");
        let path = gen("psoft", "cc=max-age%3D60&etag=s1");
        caje.store(&path).await;
        origin.bump("/gen/psoft").await;

        let r = caje
            .admin(
                "POST",
                &format!("/_caje/purge?url={}&soft=true", enc(&path)),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let j = r.json();
        assert_eq!(j["soft"], true, "{j}");
        assert_eq!(j["entries"], 1, "{j}");
        let listed = caje.list_entries("/gen/psoft").await;
        assert_eq!(listed.len(), 1, "soft purge keeps the entry: {listed:?}");

        let r = caje.get(&path).await;
        assert_eq!(r.status, 200);
        r.cache_status().assert_fwd("stale", 304, false);
        assert_eq!(body_version(&r), 0, "the kept body is served after the 304");
        assert_eq!(origin.path_stat("/gen/psoft", "conditional").await, 1);
        assert_eq!(origin.path_stat("/gen/psoft", "not_modified").await, 1);

        caje.get(&path).await.cache_status().assert_hit();
        assert_eq!(origin.requests("/gen/psoft").await, 2);
    })
    .await
}

/// `/_caje/list` reports `ttl` 0 "when stale": a soft-purged entry is stale.
#[tokio::test]
async fn soft_purged_entry_is_listed_as_stale() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "");
        let path = gen("psoft-list", "cc=max-age%3D60&etag=s1");
        caje.store(&path).await;
        let listed = caje.list_entries("/gen/psoft-list").await;
        assert_eq!(listed[0]["fresh"], true, "{listed:?}");

        let r = caje
            .admin(
                "POST",
                &format!("/_caje/purge?url={}&soft=true", enc(&path)),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let listed = caje.list_entries("/gen/psoft-list").await;
        assert_eq!(listed.len(), 1, "soft purge keeps the entry: {listed:?}");
        assert!(
            listed[0]["fresh"] == false && listed[0]["ttl"] == 0,
            "a soft-purged entry must be listed as stale (fresh false, ttl 0): {listed:?}"
        );
        assert_eq!(listed[0]["on_disk"], true, "{listed:?}");
        assert_eq!(origin.requests("/gen/psoft-list").await, 1);
    })
    .await
}

#[tokio::test]
async fn purge_by_tag_removes_exactly_the_tagged_entries() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "");
        let tagged = |name: &str, keys: &str| {
            gen(
                name,
                &format!(
                    "cc=max-age%3D60&header={}",
                    enc(&format!("Surrogate-Key:{keys}"))
                ),
            )
        };
        let t1 = tagged("pt1", "a b");
        let t2 = tagged("pt2", "ab");
        let t3 = tagged("pt3", "c b");
        for p in [&t1, &t2, &t3] {
            let r = caje.store(p).await;
            assert!(
                r.header("surrogate-key").is_none(),
                "Surrogate-Key sent to the client: {:?}",
                r.headers
            );
            let hit = caje.get(p).await;
            hit.cache_status().assert_hit();
            assert!(
                hit.header("surrogate-key").is_none(),
                "on a hit: {:?}",
                hit.headers
            );
        }

        let r = caje.admin("POST", "/_caje/purge?tag=b").await;
        assert_eq!(r.status, 200, "{}", r.text());
        let j = r.json();
        assert_eq!(j["entries"], 2, "{j}");
        assert_eq!(j["rows"], 2, "{j}");
        assert_eq!(j["purged"]["tag"], "b", "{j}");

        assert_refetched(&caje.get(&t1).await, 0, "tag b on pt1");
        assert_refetched(&caje.get(&t3).await, 0, "tag b on pt3");
        caje.get(&t2).await.cache_status().assert_hit();
        assert_eq!(origin.requests("/gen/pt1").await, 2);
        assert_eq!(origin.requests("/gen/pt2").await, 1);
        assert_eq!(origin.requests("/gen/pt3").await, 2);
    })
    .await
}

#[tokio::test]
async fn purge_method_requires_the_admin_token() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start_with(
            CajeConfig::for_origin(&origin.base(), "").with_admin_token("s3cret-token"),
        );
        let path = gen("pm", "cc=max-age%3D60");
        let url = caje.url(&path);
        caje.store(&path).await;

        let r = request("PURGE", &url, &[], b"").await;
        assert_eq!(r.status, 401, "{}", r.text());
        assert!(r
            .header("www-authenticate")
            .is_some_and(|v| v.starts_with("Bearer")));
        let r = request("PURGE", &url, &[("Authorization", "Bearer wrong")], b"").await;
        assert_eq!(r.status, 401);
        caje.get(&path).await.cache_status().assert_hit();
        assert_eq!(
            origin.requests("/gen/pm").await,
            1,
            "unauthorised PURGE reached the origin"
        );

        let r = caje.admin("PURGE", &path).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["entries"], 1, "{}", r.text());
        assert_refetched(&caje.get(&path).await, 0, "PURGE");
        assert_eq!(origin.requests("/gen/pm").await, 2);
        let by_method = &origin.stats().await["paths"]["/gen/pm"]["by_method"];
        assert!(
            by_method.get("PURGE").is_none(),
            "PURGE forwarded: {by_method}"
        );
    })
    .await
}
