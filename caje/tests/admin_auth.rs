//! Admin API access: a configured bearer token is required when set; without a token only
//! clients in `admin.allow_from` (loopback by default) get in.

mod support;

use std::net::{IpAddr, Ipv4Addr};

use support::http::try_request_from;
use support::{get, within, Caje, CajeConfig, Origin};

const TOKEN: &str = "s3cret-admin-token";

async fn assert_token_enforced(caje: &Caje) {
    let url = caje.url("/_caje/list");

    let none = get(&url, &[]).await;
    assert_eq!(none.status, 401, "no token: {}", none.text());
    let www = none.header("www-authenticate").unwrap_or_default();
    assert!(
        www.to_ascii_lowercase().starts_with("bearer"),
        "401 without `WWW-Authenticate: Bearer`: {:?}",
        none.headers
    );

    let wrong = get(&url, &[("Authorization", "Bearer not-the-token")]).await;
    assert_eq!(wrong.status, 401, "wrong token");
    let prefix = get(
        &url,
        &[("Authorization", &format!("Bearer {}", &TOKEN[..5]))],
    )
    .await;
    assert_eq!(prefix.status, 401, "token prefix");
    let basic = get(&url, &[("Authorization", &format!("Basic {TOKEN}"))]).await;
    assert_eq!(basic.status, 401, "wrong scheme");

    let right = get(&url, &[("Authorization", &format!("Bearer {TOKEN}"))]).await;
    assert_eq!(right.status, 200, "right token: {}", right.text());
    assert!(right.json()["entries"].is_array());
}

#[tokio::test]
async fn token_from_flag_is_required() {
    within(30, async {
        let origin = Origin::start();
        let caje =
            Caje::start_with(CajeConfig::for_origin(&origin.base(), "").with_admin_token(TOKEN));
        assert_token_enforced(&caje).await;
        assert_eq!(origin.total().await, 0, "admin requests reached the origin");
    })
    .await
}

#[tokio::test]
async fn token_from_env_is_required() {
    within(30, async {
        let origin = Origin::start();
        let mut cfg = CajeConfig::for_origin(&origin.base(), "");
        cfg.env.push(("CAJE_ADMIN_TOKEN".into(), TOKEN.into()));
        assert_token_enforced(&Caje::start_with(cfg)).await;
    })
    .await
}

#[tokio::test]
async fn token_from_config_file_is_required() {
    within(30, async {
        let origin = Origin::start();
        let cfg = CajeConfig::for_origin(&origin.base(), &format!("[admin]\ntoken = {TOKEN:?}\n"));
        assert_token_enforced(&Caje::start_with(cfg)).await;
    })
    .await
}

/// A token also applies to loopback clients: being local is not enough.
#[tokio::test]
async fn token_applies_to_loopback_too() {
    within(30, async {
        let origin = Origin::start();
        let caje =
            Caje::start_with(CajeConfig::for_origin(&origin.base(), "").with_admin_token(TOKEN));
        let r = get(&caje.url("/_caje/stats"), &[]).await;
        assert_eq!(r.status, 401);
        let r = get(
            &caje.url("/_caje/stats"),
            &[("Authorization", &format!("Bearer {TOKEN}"))],
        )
        .await;
        assert_eq!(r.status, 200);
    })
    .await
}

#[tokio::test]
async fn no_token_allows_loopback() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "");
        let r = get(&caje.url("/_caje/list"), &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(r.json()["entries"].is_array());
    })
    .await
}

#[tokio::test]
async fn no_token_rejects_clients_outside_allow_from() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "[admin]\nallow_from = [\"127.0.0.2/32\"]\n");
        let url = caje.url("/_caje/list");

        let r = get(&url, &[]).await; // from 127.0.0.1
        assert_eq!(r.status, 403, "{}", r.text());
        // A bearer header does not help when no token is configured.
        let r = get(&url, &[("Authorization", "Bearer anything")]).await;
        assert_eq!(r.status, 403);

        // The allowed address does get in (Linux routes all of 127/8 to loopback).
        let from = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
        let r = try_request_from(from, "GET", &url, &[])
            .await
            .expect("request from 127.0.0.2");
        assert_eq!(
            r.status,
            200,
            "from 127.0.0.2: {:?}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(origin.total().await, 0);
    })
    .await
}
