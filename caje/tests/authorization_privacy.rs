//! A request that carries `Authorization` is answered from the cache only by a stored response
//! that explicitly allows shared reuse for authenticated requests (`public`, `s-maxage`,
//! `must-revalidate`: RFC 9111 §3.5). Otherwise it goes to the origin, and what the origin
//! answers it is not stored. Every combination of anonymous and two users, in every order,
//! against plain, private, Set-Cookie, no-store, `Vary: Cookie` and `Vary: Authorization`
//! responses: each client must get the origin's answer for itself.

mod support;
#[path = "support_ext/mod.rs"]
mod support_ext;

use support::{request, within, Caje, CajeConfig};
use support_ext::{burst, MiniOrigin, Reply, Seen};

/// `(path, response headers)`. The origin's body names the user it answered.
const PAGES: &[(&str, &[(&str, &str)])] = &[
    ("/plain", &[("Cache-Control", "max-age=600")]),
    ("/private", &[("Cache-Control", "private, max-age=600")]),
    (
        "/cookie",
        &[("Cache-Control", "max-age=600"), ("Set-Cookie", "sid=1")],
    ),
    ("/nostore", &[("Cache-Control", "no-store")]),
    (
        "/vary-cookie",
        &[("Cache-Control", "max-age=600"), ("Vary", "Cookie")],
    ),
    (
        "/vary-auth",
        &[("Cache-Control", "max-age=600"), ("Vary", "Authorization")],
    ),
];

/// Who the origin thinks it answers.
fn user(req: &Seen) -> String {
    req.header("authorization")
        .map_or("anonymous".to_owned(), |a| a.replace("Bearer ", ""))
}

async fn origin() -> MiniOrigin {
    MiniOrigin::start(|req: &Seen| {
        let path = req.target.split('?').next().unwrap_or("");
        let headers: &[(&str, &str)] = PAGES
            .iter()
            .find(|(p, _)| *p == path)
            .map_or(&[("Cache-Control", "public, max-age=600")], |(_, h)| h);
        Reply::new(200, headers, &format!("page for {}\n", user(req)))
    })
    .await
}

/// `None` for an anonymous request.
async fn get_as(caje: &Caje, path: &str, who: Option<&str>) -> String {
    let auth = who.map(|u| format!("Bearer {u}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("Authorization", a)])
        .unwrap_or_default();
    let r = request("GET", &caje.url(path), &headers, b"").await;
    assert_eq!(r.status, 200, "{path} as {who:?}: {}", r.text());
    r.text()
}

fn expected(who: Option<&str>) -> String {
    format!("page for {}\n", who.unwrap_or("anonymous"))
}

/// Every order of three requesters, each twice in a row and interleaved.
const ORDERS: &[&[Option<&str>]] = &[
    &[
        None,
        Some("userA"),
        Some("userB"),
        None,
        Some("userA"),
        Some("userB"),
    ],
    &[
        Some("userA"),
        None,
        Some("userB"),
        Some("userA"),
        None,
        Some("userB"),
    ],
    &[
        Some("userA"),
        Some("userA"),
        Some("userB"),
        Some("userB"),
        None,
        None,
    ],
    &[
        Some("userB"),
        Some("userA"),
        None,
        None,
        Some("userB"),
        Some("userA"),
    ],
];

#[tokio::test]
async fn each_user_gets_their_own_page_for_every_kind_of_response() {
    within(120, async {
        let origin = origin().await;
        let caje = Caje::start_with(CajeConfig::for_origin(&origin.base(), ""));
        for (i, order) in ORDERS.iter().enumerate() {
            for (page, _) in PAGES {
                let path = format!("{page}?order={i}");
                for who in order.iter() {
                    let got = get_as(&caje, &path, *who).await;
                    assert_eq!(got, expected(*who), "{path}, sequence {order:?}");
                }
                // Give a stored anonymous copy time to be committed, then ask again as
                // each user: a committed entry must not leak either.
                if caje.list_entries(&path).await.iter().any(|e| e["on_disk"] == true) {
                    for who in [Some("userA"), Some("userB")] {
                        assert_eq!(get_as(&caje, &path, who).await, expected(who), "{path}");
                    }
                }
            }
        }
        // Authenticated requests always reached the origin: nothing was stored for them.
        let seen = origin.seen();
        for page in ["/plain", "/cookie", "/vary-cookie", "/vary-auth"] {
            let auth_seen = seen
                .iter()
                .filter(|s| s.target.starts_with(page) && s.header("authorization").is_some())
                .count();
            let auth_sent = ORDERS
                .iter()
                .map(|o| o.iter().filter(|w| w.is_some()).count())
                .sum::<usize>();
            assert!(
                auth_seen >= auth_sent,
                "{page}: {auth_seen} authenticated requests reached the origin, {auth_sent} were sent"
            );
        }
    })
    .await
}

#[tokio::test]
async fn an_anonymous_copy_is_still_a_hit_for_anonymous_clients() {
    within(30, async {
        let origin = origin().await;
        let caje = Caje::start_with(CajeConfig::for_origin(&origin.base(), ""));
        caje.store("/plain").await;
        let _ = get_as(&caje, "/plain", Some("userA")).await;
        let r = caje.get("/plain").await;
        r.cache_status().assert_hit();
        assert_eq!(r.text(), expected(None));
        // userA's request went to the origin and did not replace the stored copy.
        assert_eq!(origin.requests(), 2);
    })
    .await
}

#[tokio::test]
async fn shared_reuse_is_allowed_when_the_response_says_so() {
    within(30, async {
        let origin = MiniOrigin::start(|req: &Seen| {
            let cc = match req.target.as_str() {
                "/public" => "public, max-age=600",
                "/s-maxage" => "s-maxage=600",
                _ => "max-age=600, must-revalidate",
            };
            Reply::new(
                200,
                &[("Cache-Control", cc)],
                &format!("page for {}\n", user(req)),
            )
        })
        .await;
        let caje = Caje::start_with(CajeConfig::for_origin(&origin.base(), ""));
        for path in ["/public", "/s-maxage", "/must-revalidate"] {
            caje.store(path).await;
            let before = origin.requests();
            // The origin said this page is the same for everyone.
            assert_eq!(
                get_as(&caje, path, Some("userA")).await,
                expected(None),
                "{path}"
            );
            assert_eq!(origin.requests(), before, "{path} went to the origin");
        }
    })
    .await
}

/// Authenticated requests arriving while an anonymous fetch of the same URL is in flight
/// must not be collapsed onto it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authenticated_requests_are_not_collapsed_onto_an_anonymous_fetch() {
    within(60, async {
        let origin = MiniOrigin::start(|req: &Seen| {
            // Slow enough for the other requests to arrive while this one is in flight.
            std::thread::sleep(std::time::Duration::from_millis(300));
            Reply::new(
                200,
                &[("Cache-Control", "max-age=600")],
                &format!("page for {}\n", user(req)),
            )
        })
        .await;
        let caje = Caje::start_with(CajeConfig::for_origin(&origin.base(), ""));
        let url = caje.url("/slow");
        let anon = tokio::spawn({
            let url = url.clone();
            async move { burst(3, "GET", &url, &[]).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let a = burst(3, "GET", &url, &[("Authorization", "Bearer userA")]).await;
        for r in a {
            assert_eq!(
                r.text(),
                expected(Some("userA")),
                "`{}`",
                r.cache_status().raw
            );
        }
        for r in anon.await.unwrap() {
            assert_eq!(r.text(), expected(None));
        }
    })
    .await
}
