//! `/_origin/*`: versions, statistics and reset, as caje's tests use them.

mod support;

use std::time::Duration;

use hyper::Method;
use serde_json::json;
use support::{bounded, get, post, request, Origin};

#[tokio::test]
async fn bump_changes_the_version_of_every_query_variant() {
    let origin = Origin::start();
    bounded(async {
        let before = get(&origin.url("/gen/a?x=1")).await;
        assert!(before.text().starts_with("path=/gen/a?x=1 version=0\n"));

        let bumped = post(&origin.url("/_origin/bump?path=/gen/a")).await;
        assert_eq!(bumped.status, 200);
        assert_eq!(bumped.json(), json!({"path": "/gen/a", "version": 1}));

        let after = get(&origin.url("/gen/a?x=2")).await;
        assert!(after.text().starts_with("path=/gen/a?x=2 version=1\n"));
        assert_eq!(after.header("x-origin-version"), Some("1"));
        let other = get(&origin.url("/gen/b")).await;
        assert_eq!(other.header("x-origin-version"), Some("0"));

        assert_eq!(post(&origin.url("/_origin/bump")).await.status, 400);
        assert_eq!(
            get(&origin.url("/_origin/bump?path=/gen/a")).await.status,
            405
        );
    })
    .await;
}

#[tokio::test]
async fn stats_count_requests_revalidations_and_headers() {
    let origin = Origin::start();
    bounded(async {
        let url = origin.url("/gen/s?etag=v1&x=1");
        get(&url).await;
        request(Method::HEAD, &url, &[]).await;
        let revalidated = request(Method::GET, &url, &[("if-none-match", "\"v1\"")]).await;
        assert_eq!(revalidated.status, 304);
        let changed = request(Method::GET, &url, &[("if-none-match", "\"v0\"")]).await;
        assert_eq!(changed.status, 200);
        let headers = [("x-forwarded-for", "10.0.0.1"), ("via", "1.1 caje")];
        request(Method::POST, &origin.url("/gen/s?other=query"), &headers).await;
        get(&origin.url("/fast-missing")).await;

        let stats = get(&origin.url("/_origin/stats")).await.json();
        assert_eq!(stats["total"], 6);
        let s = &stats["paths"]["/gen/s"];
        assert_eq!(s["requests"], 5);
        assert_eq!(s["conditional"], 2);
        assert_eq!(s["not_modified"], 1);
        assert_eq!(s["by_method"], json!({"GET": 3, "HEAD": 1, "POST": 1}));
        let last = &s["last_headers"];
        assert_eq!(last["x-forwarded-for"], "10.0.0.1");
        assert_eq!(last["via"], "1.1 caje");
        assert!(
            last.get("if-none-match").is_none(),
            "only the latest request"
        );
        assert_eq!(stats["paths"]["/fast-missing"]["requests"], 1);
        assert!(
            stats["paths"]
                .as_object()
                .unwrap()
                .keys()
                .all(|p| !p.starts_with("/_origin")),
            "control requests are not counted: {stats}"
        );
    })
    .await;
}

#[tokio::test]
async fn requests_are_counted_while_still_delayed() {
    let origin = Origin::start();
    bounded(async {
        let url = origin.url("/gen/d?delay_ms=2000");
        let slow = tokio::spawn(async move { get(&url).await });
        loop {
            let stats = get(&origin.url("/_origin/stats")).await.json();
            if stats["paths"]["/gen/d"]["requests"] == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!slow.is_finished());
        slow.abort();
    })
    .await;
}

#[tokio::test]
async fn reset_forgets_counts_and_versions() {
    let origin = Origin::start();
    bounded(async {
        get(&origin.url("/gen/r")).await;
        post(&origin.url("/_origin/bump?path=/gen/r")).await;
        let reset = post(&origin.url("/_origin/reset")).await;
        assert_eq!(reset.status, 200);
        let stats = get(&origin.url("/_origin/stats")).await.json();
        assert_eq!(stats, json!({"total": 0, "paths": {}}));
        let reply = get(&origin.url("/gen/r")).await;
        assert_eq!(reply.header("x-origin-version"), Some("0"));
        assert_eq!(get(&origin.url("/_origin/reset")).await.status, 405);
    })
    .await;
}
