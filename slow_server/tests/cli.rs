//! The process contract: the stdout line, flags, graceful exit, fixed pages and their delays.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::{bounded, get, Origin};

#[tokio::test]
async fn prints_the_bound_address_on_stdout() {
    let origin = Origin::start();
    let port: u16 = origin
        .line
        .strip_prefix("slow_server listening on http://127.0.0.1:")
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("unexpected line {:?}", origin.line));
    assert_ne!(port, 0);
    let reply = bounded(get(&origin.url("/"))).await;
    assert_eq!(reply.status, 200);
}

#[test]
fn help_explains_every_flag() {
    let out = Command::new(env!("CARGO_BIN_EXE_slow_server"))
        .arg("--help")
        .output()
        .expect("running --help");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in ["--listen", "--delay-scale", "127.0.0.1:3000", "delay_ms"] {
        assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
    }
}

#[test]
fn rejects_a_negative_delay_scale() {
    let out = Command::new(env!("CARGO_BIN_EXE_slow_server"))
        .args(["--listen", "127.0.0.1:0", "--delay-scale", "-1"])
        .output()
        .expect("running slow_server");
    assert!(!out.status.success());
}

#[tokio::test]
async fn sigterm_exits_cleanly() {
    let origin = Origin::start();
    assert_eq!(bounded(get(&origin.url("/fast"))).await.status, 200);
    let status = origin.terminate();
    assert!(status.success(), "exit status {status:?}");
}

#[tokio::test]
async fn index_lists_routes_and_is_not_cacheable() {
    let origin = Origin::start();
    let reply = bounded(get(&origin.url("/"))).await;
    assert_eq!(reply.status, 200);
    assert!(reply.header("cache-control").is_none());
    assert!(reply
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    let page = reply.text();
    for needle in [
        "/slow",
        "/fast",
        "/gen/",
        "/_origin/stats",
        "abort_after",
        "vary",
    ] {
        assert!(page.contains(needle), "index lacks {needle}");
    }
}

#[tokio::test]
async fn fast_and_slow_wait_their_scaled_delay() {
    // 1 s and 5 s scaled by 0.1: 100 ms and 500 ms.
    let origin = Origin::start_with(&["--delay-scale", "0.1"]);
    bounded(async {
        for (path, delay) in [("/fast", 100), ("/slow", 500)] {
            let started = Instant::now();
            let reply = get(&origin.url(path)).await;
            let took = started.elapsed();
            assert_eq!(reply.status, 200);
            assert_eq!(reply.header("cache-control"), Some("max-age=60"));
            assert!(took >= Duration::from_millis(delay), "{path} took {took:?}");
            assert!(
                took < Duration::from_millis(delay * 10),
                "{path} took {took:?}: delay not scaled"
            );
        }
    })
    .await;
}

#[tokio::test]
async fn gen_delay_is_literal_milliseconds() {
    let origin = Origin::start_with(&["--delay-scale", "0.01"]);
    let started = Instant::now();
    let reply = bounded(get(&origin.url("/gen/a?delay_ms=300"))).await;
    assert_eq!(reply.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn unknown_paths_are_404() {
    let origin = Origin::start();
    bounded(async {
        for path in ["/nope", "/gen", "/_origin/nope"] {
            let reply = get(&origin.url(path)).await;
            assert_eq!(reply.status, 404, "{path}");
            assert!(reply.text().contains("not found"));
        }
    })
    .await;
}
