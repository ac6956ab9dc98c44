//! Responses that a shared cache must not store (`no-store`, `private`, `Set-Cookie`, and any
//! answer to a request with `Authorization` unless the origin allows it) are forwarded every
//! time and never reported as `stored`.

mod support;

use support::{gen, get, within, Caje, Origin};

/// Requests `path` twice with `headers`; both must reach the origin, neither may be stored,
/// and the first must carry `detail=<detail>`.
async fn assert_never_stored(
    origin: &Origin,
    caje: &Caje,
    name: &str,
    query: &str,
    headers: &[(&str, &str)],
    detail: &str,
) {
    let path = gen(name, query);
    let first = get(&caje.url(&path), headers).await;
    assert_eq!(first.status, 200, "{}", first.text());
    let cs = first.cache_status();
    assert_eq!(cs.fwd(), Some("uri-miss"), "{}", cs.raw);
    cs.assert_not_stored(detail);

    let second = get(&caje.url(&path), headers).await;
    assert_eq!(second.status, 200);
    let cs2 = second.cache_status();
    assert!(
        !cs2.is_hit() && !cs2.is_stored(),
        "second request: `{}`",
        cs2.raw
    );
    assert_eq!(
        origin.requests(&format!("/gen/{name}")).await,
        2,
        "both requests must reach the origin"
    );
    assert!(
        caje.list_entries(&format!("/gen/{name}")).await.is_empty(),
        "not-stored response appears in /_caje/list"
    );
}

#[tokio::test]
async fn no_store_is_not_stored() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "");
        assert_never_stored(&origin, &caje, "ns", "cc=no-store", &[], "no-store").await;
        // no-store wins even next to an explicit lifetime.
        assert_never_stored(
            &origin,
            &caje,
            "ns2",
            "cc=max-age%3D60%2C%20no-store",
            &[],
            "no-store",
        )
        .await;
    })
    .await
}

#[tokio::test]
async fn private_is_not_stored() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "");
        assert_never_stored(
            &origin,
            &caje,
            "pr",
            "cc=private%2C%20max-age%3D60",
            &[],
            "private",
        )
        .await;
    })
    .await
}

#[tokio::test]
async fn set_cookie_is_not_stored() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "");
        assert_never_stored(
            &origin,
            &caje,
            "sc",
            "cc=max-age%3D60&set_cookie=session%3Dabc",
            &[],
            "set-cookie",
        )
        .await;
    })
    .await
}

#[tokio::test]
async fn authorization_request_is_not_stored() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "");
        assert_never_stored(
            &origin,
            &caje,
            "au",
            "cc=max-age%3D60",
            &[("Authorization", "Bearer user-secret")],
            "authorization",
        )
        .await;
    })
    .await
}

/// RFC 9111 3.5: `public` or `s-maxage` lets a shared cache store the answer to an
/// authorized request.
#[tokio::test]
async fn authorization_with_public_or_s_maxage_is_stored() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "");
        for (name, cc) in [
            ("pub", "public%2C%20max-age%3D60"),
            ("smax", "s-maxage%3D60"),
        ] {
            let path = gen(name, &format!("cc={cc}"));
            let auth = [("Authorization", "Bearer user-secret")];
            let first = get(&caje.url(&path), &auth).await;
            assert_eq!(first.status, 200);
            first.cache_status().assert_fwd("uri-miss", 200, true);
            caje.settle(&path).await;
            let second = get(&caje.url(&path), &auth).await;
            second.cache_status().assert_hit();
            assert_eq!(origin.requests(&format!("/gen/{name}")).await, 1);
        }
    })
    .await
}

/// A response without any explicit freshness is not stored while heuristics are off (the
/// default).
#[tokio::test]
async fn no_explicit_freshness_is_not_stored() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "");
        assert_never_stored(&origin, &caje, "nf", "", &[], "no-explicit-freshness").await;
    })
    .await
}
