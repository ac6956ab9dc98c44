//! When the origin fails, a stale entry is served where allowed (`fwd=stale; [fwd-status=5xx;]
//! ttl=-s; detail=stale-if-error`): within the response's `stale-if-error=N`, or, for an
//! unreachable origin, `cache.stale_if_unreachable_secs`. After the window, or with
//! `must-revalidate`, the client gets the error.

mod support;
#[path = "support_ext/mod.rs"]
mod support_ext;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::{gen, within, Caje, CajeConfig, Origin};
use support_ext::{body_version, ttl, MiniOrigin, Reply};

/// Long enough after a `max-age=1` store for the entry to be stale by any rounding.
const PAST_MAX_AGE_1: Duration = Duration::from_millis(2200);

#[track_caller]
fn assert_stale_if_error(r: &support::Resp, fwd_status: Option<u16>) {
    assert_eq!(
        r.status,
        200,
        "stale copy expected, got {} {}",
        r.status,
        r.text()
    );
    let cs = r.cache_status();
    assert!(
        !cs.is_hit()
            && cs.fwd() == Some("stale")
            && cs.fwd_status() == fwd_status
            && cs.detail() == Some("stale-if-error")
            && ttl(&cs).is_some_and(|t| t < 0),
        "expected `caje; fwd=stale; {}ttl=-N; detail=stale-if-error`, got `{}`",
        fwd_status.map_or(String::new(), |s| format!("fwd-status={s}; ")),
        cs.raw
    );
}

#[tokio::test]
async fn unreachable_origin_serves_stale_within_stale_if_error_then_502() {
    within(30, async {
        let origin = Origin::start();
        // Without the default serve-stale-when-down window, so that stale-if-error's own
        // window is what ends.
        let caje = Caje::start(&origin, "[cache]\nstale_if_unreachable_secs = 0\n");
        let path = gen("sie", "cc=max-age%3D1,stale-if-error%3D3");
        let first = caje.store(&path).await;
        assert_eq!(body_version(&first), 0);
        assert_eq!(origin.requests("/gen/sie").await, 1);

        drop(origin); // SIGTERM: the origin is gone.
        tokio::time::sleep(PAST_MAX_AGE_1).await;

        let r = caje.get(&path).await;
        assert_stale_if_error(&r, None);
        support::assert_same_body(&r.body, &first.body, "stale-if-error body");

        // 1 s max-age + 3 s stale-if-error: past the window 5 s after the store.
        tokio::time::sleep(Duration::from_millis(3000)).await;
        let r = caje.get(&path).await;
        assert_eq!(r.status, 502, "after the window: {}", r.text());
        let cs = r.cache_status();
        assert_eq!(cs.detail(), Some("origin-connect"), "`{}`", cs.raw);
        assert!(r.text().starts_with("caje: "), "{:?}", r.text());
    })
    .await
}

/// slow_server's status is a function of the URL, so the 5xx for a cached URL comes from a
/// scripted origin that is switched to 503 once the entry is stale.
#[tokio::test]
async fn origin_5xx_serves_stale_within_stale_if_error() {
    within(30, async {
        let failing = Arc::new(AtomicBool::new(false));
        let f = failing.clone();
        let origin = MiniOrigin::start(move |req| {
            let cc = if req.target.starts_with("/sie") {
                "max-age=1, stale-if-error=30"
            } else {
                "max-age=1"
            };
            if f.load(Ordering::SeqCst) {
                Reply::new(503, &[("Cache-Control", "no-store")], "down\n")
            } else {
                Reply::new(
                    200,
                    &[("Cache-Control", cc)],
                    &format!("path={} version=0\n", req.target),
                )
            }
        })
        .await;
        let caje = Caje::start_with(CajeConfig::for_origin(&origin.base(), ""));
        caje.store("/sie").await;
        caje.store("/plain").await;
        failing.store(true, Ordering::SeqCst);
        tokio::time::sleep(PAST_MAX_AGE_1).await;

        let r = caje.get("/sie").await;
        assert_stale_if_error(&r, Some(503));
        assert_eq!(body_version(&r), 0);

        // Without stale-if-error the 503 goes through.
        let r = caje.get("/plain").await;
        assert_eq!(r.status, 503, "{}", r.text());
        let cs = r.cache_status();
        assert_eq!(cs.fwd(), Some("stale"), "`{}`", cs.raw);
        assert_eq!(cs.fwd_status(), Some(503), "`{}`", cs.raw);
        assert_eq!(origin.requests(), 4);
    })
    .await
}

#[tokio::test]
async fn stale_if_unreachable_secs_serves_stale_without_directives() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "[cache]\nstale_if_unreachable_secs = 30\n");
        let plain = gen("siu", "cc=max-age%3D1");
        let must = gen("siu-mr", "cc=max-age%3D1,must-revalidate");
        let first = caje.store(&plain).await;
        caje.store(&must).await;

        drop(origin);
        tokio::time::sleep(PAST_MAX_AGE_1).await;

        let r = caje.get(&plain).await;
        assert_stale_if_error(&r, None);
        support::assert_same_body(&r.body, &first.body, "served stale body");

        // must-revalidate forbids serving it stale, even when the origin is down.
        let r = caje.get(&must).await;
        assert_eq!(
            r.status, 502,
            "must-revalidate served stale: {:?}",
            r.headers
        );
        assert_eq!(r.cache_status().detail(), Some("origin-connect"));
    })
    .await
}

#[tokio::test]
async fn unreachable_origin_without_stale_permission_is_502() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "[cache]\nstale_if_unreachable_secs = 0\n");
        let path = gen("siu-off", "cc=max-age%3D1");
        caje.store(&path).await;
        drop(origin);
        tokio::time::sleep(PAST_MAX_AGE_1).await;

        let r = caje.get(&path).await;
        assert_eq!(r.status, 502, "stale served by default: {:?}", r.headers);
        assert_eq!(r.cache_status().detail(), Some("origin-connect"));
    })
    .await
}
