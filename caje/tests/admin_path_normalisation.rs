//! Admin paths are matched after normalisation, so encoded or dotted spellings of `/_caje/`
//! cannot slip past auth to the origin (or into the cache).

mod support;

use support::http::try_request;
use support::{within, Caje, CajeConfig, Origin};

const DISGUISED: &[&str] = &[
    "/%5Fcaje/list",
    "/%5fcaje/list",
    "//_caje/list",
    "/x/../_caje/list",
    "/./_caje/list",
    "/_caje/./list",
    "/%5F%63aje/list",
];

#[tokio::test]
async fn disguised_admin_paths_are_admin() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start_with(
            CajeConfig::for_origin(&origin.base(), "").with_admin_token("tok-123"),
        );
        for path in DISGUISED {
            let r = try_request("GET", &caje.url(path), &[], b"")
                .await
                .unwrap_or_else(|e| panic!("{path}: {e}"));
            assert_eq!(
                r.status,
                401,
                "{path} without a token: expected the admin API's 401, got {} {:?}",
                r.status,
                r.text()
            );

            let with_token = try_request(
                "GET",
                &caje.url(path),
                &[("Authorization", "Bearer tok-123")],
                b"",
            )
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"));
            assert_eq!(
                with_token.status,
                200,
                "{path} with the token: {}",
                with_token.text()
            );
            assert!(
                with_token.json()["entries"].is_array(),
                "{path}: not the list"
            );
        }
        let stats = origin.stats().await;
        assert_eq!(
            stats["total"].as_u64(),
            Some(0),
            "disguised admin paths reached the origin: {stats}"
        );
    })
    .await
}
