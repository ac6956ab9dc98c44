//! `GET /metrics` on `metrics.listen`: a real caje is scraped before and after traffic, the
//! text passes `promtool check metrics` (skipped, visibly, without promtool), counters move
//! by exactly what was served, and `/_caje/stats` reads the same counters.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use support::{eventually, gen, get, within, Caje, Origin};

/// The metrics address caje logs at start (`... metrics at http://IP:PORT/metrics`).
async fn metrics_addr(caje: &Caje) -> SocketAddr {
    let mut found = None;
    eventually(10, "caje logs its metrics address", || {
        found = caje
            .stderr()
            .split("metrics at http://")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .and_then(|a| a.parse().ok());
        let ok = found.is_some();
        async move { ok }
    })
    .await;
    found.unwrap()
}

/// Samples of a scrape: `name{labels}` → value.
fn parse(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

async fn scrape(addr: SocketAddr) -> (String, HashMap<String, f64>) {
    let r = get(&format!("http://{addr}/metrics"), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = r.text();
    let samples = parse(&text);
    (text, samples)
}

fn promtool_check(text: &str) {
    use std::io::Write;
    let child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        eprintln!("SKIPPED: promtool check metrics (promtool is not installed; Debian package `prometheus`)");
        return;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics failed: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn metrics_are_valid_and_move_with_traffic() {
    within(60, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "[metrics]\nlisten = \"127.0.0.1:0\"\n");
        let addr = metrics_addr(&caje).await;
        let (text, before) = scrape(addr).await;
        promtool_check(&text);
        let v = |m: &HashMap<String, f64>, k: &str| m.get(k).copied().unwrap_or(0.0);
        let hit = r#"caje_http_requests_total{cache="hit",method="GET",status="2xx"}"#;
        let miss = r#"caje_http_requests_total{cache="miss",method="GET",status="2xx"}"#;
        assert_eq!(v(&before, hit) + v(&before, miss), 0.0);
        // A fresh cache directory: no snapshot, the index came from a scan, nothing to check.
        assert_eq!(
            v(&before, r#"caje_cache_index_source{source="scan"}"#),
            1.0,
            "{text}"
        );
        assert_eq!(
            v(&before, r#"caje_cache_index_source{source="snapshot"}"#),
            0.0
        );
        assert_eq!(v(&before, "caje_cache_index_checking"), 0.0);

        let path = gen("m", "cc=max-age%3D60&bytes=1000");
        let first = caje.get(&path).await;
        first.cache_status().assert_fwd("uri-miss", 200, true);
        caje.settle(&path).await;
        let second = caje.get(&path).await;
        second.cache_status().assert_hit();
        let passed = support::request("DELETE", &caje.url("/gen/other"), &[], b"").await;

        // Counted when the body ends, just after the client has it.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while v(
            &scrape(addr).await.1,
            "caje_http_request_duration_seconds_count",
        ) < 3.0
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the requests were not counted"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (text, after_text) = scrape(addr).await;
        promtool_check(&text);
        assert_eq!(v(&after_text, hit), 1.0, "{text}");
        assert_eq!(v(&after_text, miss), 1.0, "{text}");
        let class = format!("{}xx", passed.status / 100);
        let pass =
            format!(r#"caje_http_requests_total{{cache="pass",method="DELETE",status="{class}"}}"#);
        assert_eq!(v(&after_text, &pass), 1.0, "{text}");
        assert_eq!(
            v(&after_text, "caje_http_request_duration_seconds_count"),
            3.0
        );
        assert!(
            v(
                &after_text,
                r#"caje_http_request_duration_seconds_bucket{le="+Inf"}"#
            ) == 3.0,
            "{text}"
        );
        let served = v(&after_text, "caje_http_response_body_bytes_total");
        assert!(served >= 2000.0, "served {served}");
        assert!(v(&after_text, "caje_origin_response_body_bytes_total") >= 1000.0);
        assert_eq!(
            v(&after_text, "caje_origin_fetch_duration_seconds_count"),
            2.0,
            "{text}"
        );
        assert_eq!(v(&after_text, "caje_cache_stored_total"), 1.0);
        assert_eq!(v(&after_text, r#"caje_cache_entries{tier="disk"}"#), 1.0);
        assert_eq!(v(&after_text, r#"caje_cache_bytes{tier="disk"}"#), 1000.0);
        // The hot entry's compact metadata, within its quarter of the default 64 MiB.
        assert_eq!(
            v(&after_text, r#"caje_cache_entries{tier="metadata"}"#),
            1.0
        );
        assert!(v(&after_text, r#"caje_cache_bytes{tier="metadata"}"#) > 0.0);
        assert_eq!(
            v(&after_text, r#"caje_cache_capacity_bytes{tier="metadata"}"#),
            16_777_216.0
        );
        assert_eq!(
            v(&after_text, r#"caje_litefs_role{role="standalone"}"#),
            1.0
        );
        assert!(
            after_text.contains_key("caje_manifest_queue_depth"),
            "{text}"
        );
        assert!(
            after_text.contains_key(r#"caje_populate_pages_total{result="fetched"}"#),
            "{text}"
        );
        assert!(
            after_text.contains_key("caje_tombstones_applied_total"),
            "{text}"
        );

        // The admin JSON reads the same counters.
        let stats = caje.stats().await;
        assert_eq!(
            stats["hits"].as_f64(),
            Some(v(&after_text, "caje_cache_hits_total"))
        );
        assert_eq!(
            stats["misses"].as_f64(),
            Some(v(&after_text, "caje_cache_misses_total"))
        );
        let live = &stats["live"];
        assert_eq!(live["by_outcome"]["hit"], 1, "{live}");
        assert_eq!(live["by_outcome"]["miss"], 1, "{live}");
        assert_eq!(live["bytes_served"].as_f64(), Some(served), "{live}");
        let hot = live["hot_urls"].as_array().unwrap();
        assert!(hot[0]["url"].as_str().unwrap().ends_with(&path), "{live}");
        assert_eq!(hot[0]["count"], 2, "{live}");

        // Admin requests are not traffic.
        let (_, again) = scrape(addr).await;
        assert_eq!(v(&again, "caje_http_request_duration_seconds_count"), 3.0);

        let other = get(&format!("http://{addr}/"), &[]).await;
        assert_eq!(other.status, 404);
    })
    .await;
}

#[tokio::test]
async fn metrics_listener_is_off_by_default() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "");
        let r = caje.get(&gen("x", "cc=max-age%3D60")).await;
        assert_eq!(r.status, 200);
        assert!(
            !caje.stderr().contains("metrics at http://"),
            "{}",
            caje.stderr()
        );
    })
    .await;
}
