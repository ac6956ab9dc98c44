//! `Cookie` and `Authorization` request headers are forwarded to the origin but never written
//! to disk: not in the cache dir, not in the manifest, whatever the response looked like.

mod support;

use support::{contains_bytes, files_under, gen, get, within, Caje, Origin};

const COOKIE_SECRET: &str = "cookiesecret7f3a91";
const AUTH_SECRET: &str = "authsecret5be20c";

#[tokio::test]
async fn cookie_and_authorization_never_reach_disk() {
    within(40, async {
        let origin = Origin::start();
        let mut caje = Caje::start(&origin, "");
        let cookie = format!("sid={COOKIE_SECRET}");
        let auth = format!("Bearer {AUTH_SECRET}");
        let both = [
            ("Cookie", cookie.as_str()),
            ("Authorization", auth.as_str()),
        ];
        let only_cookie = [("Cookie", cookie.as_str())];

        // Stored: `public` lets an authorized response be shared.
        let stored = gen("pub", "cc=public%2C%20max-age%3D60&bytes=2000");
        let r = get(&caje.url(&stored), &both).await;
        assert_eq!(r.status, 200);
        r.cache_status().assert_fwd("uri-miss", 200, true);
        // Stored: a plain cacheable response requested with a cookie.
        let with_cookie = gen("ck", "cc=max-age%3D60");
        let r = get(&caje.url(&with_cookie), &only_cookie).await;
        r.cache_status().assert_fwd("uri-miss", 200, true);
        // Varies on the secret headers: must not put their values in the cache key on disk.
        for (name, vary) in [("vc", "Cookie"), ("va", "Authorization")] {
            let p = gen(name, &format!("cc=public%2C%20max-age%3D60&vary={vary}"));
            let r = get(&caje.url(&p), &both).await;
            assert_eq!(r.status, 200, "{}", r.text());
        }
        // And the uncacheable ones.
        for (name, q) in [
            ("ns", "cc=no-store"),
            ("pr", "cc=private%2C%20max-age%3D60"),
        ] {
            let r = get(&caje.url(&gen(name, q)), &both).await;
            assert_eq!(r.status, 200);
        }

        // The origin did get them (forwarded, just not stored).
        let seen = origin.last_headers("/gen/pub").await;
        assert_eq!(
            seen.get("cookie").and_then(|v| v.as_str()),
            Some(cookie.as_str())
        );
        assert_eq!(
            seen.get("authorization").and_then(|v| v.as_str()),
            Some(auth.as_str())
        );

        // Check with everything flushed: stop caje first.
        let st = caje.stop();
        assert_eq!(st.code(), Some(0), "caje exit on SIGTERM: {st}");

        let mut checked = 0;
        let root = caje.dir.root().to_path_buf();
        for file in files_under(&root) {
            if caje.dir.is_harness_file(&file) {
                continue;
            }
            let bytes = std::fs::read(&file).unwrap();
            for secret in [COOKIE_SECRET, AUTH_SECRET] {
                assert!(
                    !contains_bytes(&bytes, secret.as_bytes()),
                    "{} contains the request secret {secret:?}",
                    file.display()
                );
            }
            checked += 1;
        }
        assert!(
            checked > 0,
            "no cache or manifest files found under {}",
            root.display()
        );
    })
    .await
}
