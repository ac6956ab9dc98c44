//! With `cache.honor_client_no_cache = false` (the default) a client's `Cache-Control:
//! no-cache` / `max-age=0` / `Pragma: no-cache` cannot force an origin fetch; with it on,
//! they can.

mod support;

use support::{gen, get, within, Caje, Origin};

const BUSTERS: &[(&str, &str)] = &[
    ("Cache-Control", "no-cache"),
    ("Cache-Control", "max-age=0"),
    ("Pragma", "no-cache"),
];

#[tokio::test]
async fn client_no_cache_is_still_a_hit_by_default() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "");
        let path = gen("nc", "cc=max-age%3D60");
        caje.store(&path).await;
        for h in BUSTERS {
            let r = get(&caje.url(&path), &[*h]).await;
            let cs = r.cache_status();
            assert!(cs.is_hit(), "{}: {} forced a fetch: `{}`", h.0, h.1, cs.raw);
        }
        assert_eq!(origin.requests("/gen/nc").await, 1);
    })
    .await
}

#[tokio::test]
async fn client_no_cache_forces_a_fetch_when_honoured() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "[cache]\nhonor_client_no_cache = true\n");
        let path = gen("nc", "cc=max-age%3D60");
        caje.store(&path).await;
        let r = get(&caje.url(&path), &[("Cache-Control", "no-cache")]).await;
        assert!(!r.cache_status().is_hit(), "`{}`", r.cache_status().raw);
        assert_eq!(origin.requests("/gen/nc").await, 2);
    })
    .await
}
