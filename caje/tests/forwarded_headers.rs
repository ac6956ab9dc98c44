//! Toward the origin caje removes hop-by-hop headers and sets X-Forwarded-For/-Proto/-Host
//! and Via; end-to-end headers pass unchanged.

mod support;

use serde_json::{Map, Value};
use support::{get, within, Caje, Origin};

fn h<'a>(seen: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    seen.get(name).and_then(Value::as_str)
}

#[tokio::test]
async fn hop_by_hop_removed_and_forwarding_headers_set() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "");
        let r = get(
            &caje.url("/gen/fw?cc=no-store"),
            &[
                ("Host", "client.example"),
                ("Connection", "keep-alive, X-Hop-Custom"),
                ("X-Hop-Custom", "must-not-pass"),
                ("Keep-Alive", "timeout=5"),
                ("TE", "trailers"),
                ("Proxy-Authorization", "Basic cHJveHk6cHc="),
                ("Proxy-Connection", "keep-alive"),
                ("X-Forwarded-For", "6.6.6.6"),
                ("X-Forwarded-Proto", "https"),
                ("X-End-To-End", "kept"),
                ("Accept-Language", "fr"),
            ],
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());

        let seen = origin.last_headers("/gen/fw").await;
        for gone in [
            "x-hop-custom",
            "keep-alive",
            "te",
            "proxy-authorization",
            "proxy-connection",
        ] {
            assert!(
                seen.get(gone).is_none(),
                "hop-by-hop `{gone}` reached the origin: {seen:?}"
            );
        }
        if let Some(conn) = h(&seen, "connection") {
            assert!(
                !conn.to_ascii_lowercase().contains("x-hop-custom"),
                "client's Connection header forwarded: {conn}"
            );
        }
        assert_eq!(h(&seen, "x-end-to-end"), Some("kept"), "{seen:?}");
        assert_eq!(h(&seen, "accept-language"), Some("fr"), "{seen:?}");
        // trust_forwarded = false (default): the client's own values are replaced.
        assert_eq!(h(&seen, "x-forwarded-for"), Some("127.0.0.1"), "{seen:?}");
        assert_eq!(h(&seen, "x-forwarded-proto"), Some("http"), "{seen:?}");
        assert_eq!(
            h(&seen, "x-forwarded-host"),
            Some("client.example"),
            "{seen:?}"
        );
        let via = h(&seen, "via").unwrap_or_default();
        assert!(via.contains("1.1 caje"), "Via: {via:?} ({seen:?})");
        // Default host_header = "origin": the origin sees its own authority.
        assert_eq!(
            h(&seen, "host"),
            Some(origin.addr().to_string().as_str()),
            "{seen:?}"
        );
    })
    .await
}

#[tokio::test]
async fn trusted_forwarded_for_is_appended() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "[server]\ntrust_forwarded = true\n");
        get(
            &caje.url("/gen/tf?cc=no-store"),
            &[
                ("X-Forwarded-For", "203.0.113.7"),
                ("X-Forwarded-Proto", "https"),
            ],
        )
        .await;
        let seen = origin.last_headers("/gen/tf").await;
        let xff = h(&seen, "x-forwarded-for").unwrap_or_default();
        let parts: Vec<&str> = xff.split(',').map(str::trim).collect();
        assert_eq!(
            parts,
            ["203.0.113.7", "127.0.0.1"],
            "X-Forwarded-For: {xff:?}"
        );
        assert_eq!(h(&seen, "x-forwarded-proto"), Some("https"), "{seen:?}");
    })
    .await
}

/// With `host_header = "client"` the origin sees the Host the client asked for instead of its
/// own (virtual hosting at the origin).
#[tokio::test]
async fn client_host_header_is_sent_to_the_origin_when_configured() {
    within(30, async {
        let origin = Origin::start();
        // Appended right after the `[[origins]]` table, so `host_header` belongs to it.
        let caje = Caje::start(&origin, "host_header = \"client\"\n");
        let r = get(
            &caje.url("/gen/vhost?cc=no-store"),
            &[("Host", "client.example")],
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let seen = origin.last_headers("/gen/vhost").await;
        assert_eq!(h(&seen, "host"), Some("client.example"), "{seen:?}");
        assert_eq!(
            h(&seen, "x-forwarded-host"),
            Some("client.example"),
            "{seen:?}"
        );
    })
    .await
}
