//! Targeted cache control (RFC 9213): `Caje-Cache-Control` (name configurable with
//! `cache.targeted_cache_control`) beats `CDN-Cache-Control` beats `Cache-Control` for caje's
//! storing and freshness; an empty or invalid targeted field is ignored; the client still
//! receives the origin's `Cache-Control`.

mod support;
#[path = "support_ext/mod.rs"]
mod support_ext;

use support::{gen, within, Caje, Origin};
use support_ext::{body_version, enc, ttl};

/// `header=Name:Value` for a `/gen` query.
fn hdr(name: &str, value: &str) -> String {
    format!("header={}", enc(&format!("{name}:{value}")))
}

/// The first request is stored and the second is a hit with the stored version.
async fn assert_stored(origin: &Origin, caje: &Caje, name: &str, path: &str) -> support::Resp {
    let first = caje.store(path).await;
    origin.bump(&format!("/gen/{name}")).await;
    let r = caje.get(path).await;
    r.cache_status().assert_hit();
    assert_eq!(body_version(&r), 0);
    assert_eq!(origin.requests(&format!("/gen/{name}")).await, 1);
    first
}

/// Neither request is stored; both reach the origin.
async fn assert_not_stored(origin: &Origin, caje: &Caje, name: &str, path: &str, detail: &str) {
    let r = caje.get(path).await;
    assert_eq!(r.status, 200);
    r.cache_status().assert_not_stored(detail);
    let r = caje.get(path).await;
    assert!(!r.cache_status().is_hit(), "`{}`", r.cache_status().raw);
    assert_eq!(origin.requests(&format!("/gen/{name}")).await, 2);
}

#[tokio::test]
async fn cdn_cache_control_overrides_cache_control_for_caje_only() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "");
        let path = gen(
            "tcc-cdn",
            &format!("cc=no-store&{}", hdr("CDN-Cache-Control", "max-age=60")),
        );
        let first = assert_stored(&origin, &caje, "tcc-cdn", &path).await;
        assert_eq!(first.header("cache-control"), Some("no-store"));
        let hit = caje.get(&path).await;
        assert_eq!(
            hit.header("cache-control"),
            Some("no-store"),
            "browsers must still get the origin's Cache-Control: {:?}",
            hit.headers
        );
        let t = ttl(&hit.cache_status()).unwrap();
        assert!(
            (55..=60).contains(&t),
            "freshness from CDN-Cache-Control: {t}"
        );
    })
    .await
}

#[tokio::test]
async fn caje_cache_control_beats_cdn_cache_control() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "");
        let path = gen(
            "tcc-caje",
            &format!(
                "cc=max-age%3D60&{}&{}",
                hdr("Caje-Cache-Control", "no-store"),
                hdr("CDN-Cache-Control", "max-age=60")
            ),
        );
        assert_not_stored(&origin, &caje, "tcc-caje", &path, "no-store").await;
    })
    .await
}

#[tokio::test]
async fn empty_or_invalid_targeted_field_falls_back_to_cache_control() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "");
        // Empty CDN-Cache-Control: Cache-Control's max-age applies.
        let empty = gen(
            "tcc-empty",
            &format!("cc=max-age%3D60&{}", hdr("CDN-Cache-Control", "")),
        );
        assert_stored(&origin, &caje, "tcc-empty", &empty).await;
        // Invalid (not a structured-field dictionary): Cache-Control's no-store applies.
        let invalid = gen(
            "tcc-invalid",
            &format!(
                "cc=no-store&{}",
                hdr("CDN-Cache-Control", "max-age=60, =,;")
            ),
        );
        assert_not_stored(&origin, &caje, "tcc-invalid", &invalid, "no-store").await;
    })
    .await
}

#[tokio::test]
async fn the_targeted_field_name_is_configurable() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "[cache]\ntargeted_cache_control = \"X-My-CC\"\n");
        let path = gen(
            "tcc-name",
            &format!("cc=no-store&{}", hdr("X-My-CC", "max-age=60")),
        );
        let first = assert_stored(&origin, &caje, "tcc-name", &path).await;
        assert_eq!(first.header("cache-control"), Some("no-store"));
    })
    .await
}
