//! The admin API's JSON shapes and effects: list, clear (both, fs only, db only), stats,
//! unknown paths and wrong methods.

mod support;

use serde_json::Value;
use support::{gen, within, Caje, Origin};

fn assert_u64(v: &Value, key: &str, ctx: &Value) {
    assert!(
        v[key].is_u64(),
        "`{key}` is not a non-negative integer in {ctx}"
    );
}

fn assert_entry_shape(e: &Value) {
    for key in [
        "host",
        "method",
        "path",
        "vary",
        "status",
        "stored_at",
        "expires_at",
        "ttl",
        "size",
        "etag",
        "last_modified",
        "on_disk",
        "fresh",
    ] {
        assert!(e.get(key).is_some(), "list entry lacks `{key}`: {e}");
    }
    assert!(e["host"].is_string(), "{e}");
    assert_eq!(e["method"], "GET", "{e}");
    assert!(e["vary"].is_object(), "vary must be an object: {e}");
    assert_eq!(e["status"], 200, "{e}");
    for key in ["stored_at", "expires_at", "ttl", "size"] {
        assert_u64(e, key, e);
    }
    assert!(e["etag"].is_string() || e["etag"].is_null(), "{e}");
    assert!(
        e["last_modified"].is_string()
            || e["last_modified"].is_null()
            || e["last_modified"].is_u64(),
        "{e}"
    );
    assert!(e["on_disk"].is_boolean() && e["fresh"].is_boolean(), "{e}");
}

#[tokio::test]
async fn list_shows_stored_entries() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        caje.get(&gen("l1", "cc=max-age%3D100&bytes=1234&etag=v1"))
            .await;
        support::get(
            &caje.url(&gen("l2", "cc=max-age%3D200&vary=Accept-Language")),
            &[("Accept-Language", "de")],
        )
        .await;
        caje.settle("/gen/l1").await;
        caje.settle("/gen/l2").await;
        let list = caje.list().await;
        assert_eq!(list["count"], 2, "{list}");
        let entries = list["entries"].as_array().unwrap();
        assert_eq!(entries.len(), 2, "{list}");
        for e in entries {
            assert_entry_shape(e);
            assert_eq!(e["on_disk"], true, "{e}");
            assert_eq!(e["fresh"], true, "{e}");
        }
        let l1 = &caje.list_entries("/gen/l1").await[0];
        assert_eq!(l1["size"], 1234, "{l1}");
        assert!(
            l1["etag"].as_str().is_some_and(|t| t.contains("v1")),
            "{l1}"
        );
        let stored_at = l1["stored_at"].as_u64().unwrap();
        assert!(
            stored_at + 5 >= now && stored_at <= now + 5,
            "stored_at {stored_at} vs now {now}"
        );
        let expires_at = l1["expires_at"].as_u64().unwrap();
        assert!((99..=101).contains(&(expires_at - stored_at)), "{l1}");
        assert!((90..=100).contains(&l1["ttl"].as_u64().unwrap()), "{l1}");
        let l2 = &caje.list_entries("/gen/l2").await[0];
        let vary = l2["vary"].as_object().unwrap();
        assert!(
            vary.iter()
                .any(|(k, v)| k.eq_ignore_ascii_case("accept-language") && v == "de"),
            "{l2}"
        );
    })
    .await
}

#[tokio::test]
async fn clear_fs_removes_bodies_so_the_next_request_is_a_miss() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "");
        let path = gen("f", "cc=max-age%3D300&bytes=3000");
        caje.store(&path).await;
        caje.get(&path).await.cache_status().assert_hit();

        let r = caje.admin("POST", "/_caje/clear/fs").await;
        assert_eq!(r.status, 200, "{}", r.text());
        let j = r.json();
        assert!(j.get("db").is_none(), "clear/fs touched the db: {j}");
        assert_u64(&j["fs"], "entries", &j);
        assert_u64(&j["fs"], "bytes", &j);
        assert!(j["fs"]["entries"].as_u64().unwrap() >= 1, "{j}");
        assert!(j["fs"]["bytes"].as_u64().unwrap() >= 3000, "{j}");
        assert!(
            support::files_with_suffix(&caje.cache_dir(), ".entry").is_empty(),
            "entry files left after clear/fs"
        );

        let again = caje.get(&path).await;
        assert!(
            !again.cache_status().is_hit(),
            "hit after clear/fs: `{}`",
            again.cache_status().raw
        );
        assert_eq!(again.status, 200);
        assert_eq!(origin.requests("/gen/f").await, 2);
    })
    .await
}

#[tokio::test]
async fn clear_db_empties_the_list_but_disk_hits_still_work() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "");
        let path = gen("d", "cc=max-age%3D300");
        caje.store(&path).await;

        let r = caje.admin("POST", "/_caje/clear/db").await;
        assert_eq!(r.status, 200, "{}", r.text());
        let j = r.json();
        assert!(j.get("fs").is_none(), "clear/db touched the fs: {j}");
        assert_eq!(j["db"]["rows"], 1, "{j}");

        let list = caje.list().await;
        assert_eq!(list["count"], 0, "{list}");
        assert_eq!(list["entries"].as_array().map(Vec::len), Some(0), "{list}");

        let hit = caje.get(&path).await;
        hit.cache_status().assert_hit();
        assert_eq!(origin.requests("/gen/d").await, 1);
    })
    .await
}

#[tokio::test]
async fn clear_removes_both() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "");
        let path = gen("c", "cc=max-age%3D300&bytes=100");
        caje.store(&path).await;

        let r = caje.admin("POST", "/_caje/clear").await;
        assert_eq!(r.status, 200, "{}", r.text());
        let j = r.json();
        assert_u64(&j["fs"], "entries", &j);
        assert_u64(&j["fs"], "bytes", &j);
        assert_eq!(j["db"]["rows"], 1, "{j}");
        assert_eq!(caje.list().await["count"], 0);

        let again = caje.get(&path).await;
        again.cache_status().assert_fwd("uri-miss", 200, true);
        assert_eq!(origin.requests("/gen/c").await, 2);
    })
    .await
}

#[tokio::test]
async fn stats_shape_and_counts() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "");
        let path = gen("s", "cc=max-age%3D300&bytes=500");
        caje.store(&path).await;
        caje.get(&path).await.cache_status().assert_hit();
        caje.get(&gen("n", "cc=no-store")).await;
        let s = caje.stats().await;
        for key in [
            "requests",
            "hits",
            "misses",
            "stored",
            "not_stored",
            "store_failures",
            "corrupt_entries",
            "origin_errors",
            "entries",
            "bytes",
        ] {
            assert_u64(&s, key, &s);
        }
        assert!(s["requests"].as_u64().unwrap() >= 3, "{s}");
        assert_eq!(s["hits"], 1, "{s}");
        assert_eq!(s["misses"], 2, "{s}");
        assert_eq!(s["stored"], 1, "{s}");
        assert_eq!(s["not_stored"], 1, "{s}");
        assert_eq!(s["entries"], 1, "{s}");
        assert!(s["bytes"].as_u64().unwrap() >= 500, "{s}");
    })
    .await
}

#[tokio::test]
async fn unknown_path_is_404_json_and_wrong_method_is_405() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "");
        let r = caje.admin("GET", "/_caje/nope").await;
        assert_eq!(r.status, 404);
        assert!(r.json()["error"].is_string(), "{}", r.text());
        let r = caje.admin("GET", "/_caje/clear").await;
        assert_eq!(r.status, 405, "GET /_caje/clear");
        let r = caje.admin("POST", "/_caje/list").await;
        assert_eq!(r.status, 405, "POST /_caje/list");
        assert_eq!(origin.total().await, 0, "admin requests reached the origin");
    })
    .await
}
