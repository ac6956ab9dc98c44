//! When the origin is unreachable caje answers 502, when it is too slow 504; both with a
//! plain-text body starting `caje: ` and a `Cache-Status` naming the failure.

mod support;

use std::time::{Duration, Instant};

use support::{closed_port_addr, gen, within, Caje, CajeConfig, Origin};

#[tokio::test]
async fn origin_down_is_502() {
    within(30, async {
        let dead = closed_port_addr();
        let caje = Caje::start_with(CajeConfig::for_origin(&format!("http://{dead}"), ""));
        let r = caje.get("/gen/x?cc=max-age%3D60").await;
        assert_eq!(r.status, 502, "{}", r.text());
        assert!(r.text().starts_with("caje: "), "body: {:?}", r.text());
        let cs = r.cache_status();
        assert_eq!(cs.detail(), Some("origin-connect"), "`{}`", cs.raw);
        assert_eq!(cs.fwd(), Some("uri-miss"), "`{}`", cs.raw);
        assert!(!cs.is_stored());
        assert!(caje.stat("origin_errors").await >= 1);
        // Errors are not cached: still 502, not a cached 502 hit.
        let again = caje.get("/gen/x?cc=max-age%3D60").await;
        assert_eq!(again.status, 502);
        assert!(!again.cache_status().is_hit());
    })
    .await
}

#[tokio::test]
async fn slow_origin_is_504() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "[origin_timeouts]\nfirst_byte_ms = 300\n");
        let started = Instant::now();
        let r = caje
            .get(&gen("slow", "cc=max-age%3D60&delay_ms=2000"))
            .await;
        let took = started.elapsed();
        assert_eq!(r.status, 504, "{}", r.text());
        assert!(r.text().starts_with("caje: "), "body: {:?}", r.text());
        let cs = r.cache_status();
        assert_eq!(cs.detail(), Some("origin-timeout"), "`{}`", cs.raw);
        assert!(
            took < Duration::from_millis(1900),
            "504 came after {took:?}, i.e. only after the origin answered"
        );
        assert!(caje.stat("origin_errors").await >= 1);

        // A fast answer within the timeout still works.
        let ok = caje.get(&gen("quick", "cc=max-age%3D60")).await;
        assert_eq!(ok.status, 200);
    })
    .await
}
