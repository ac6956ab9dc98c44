//! `Vary`: a stored response is reused only for requests with the same values of the varied
//! headers; a different value is a `vary-miss`, stored beside the first.

mod support;

use support::{gen, get, within, Caje, Origin};

#[tokio::test]
async fn different_varied_header_is_a_vary_miss() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "");
        let url = caje.url(&gen("v", "cc=max-age%3D60&vary=Accept-Language"));
        let de = [("Accept-Language", "de")];
        let fr = [("Accept-Language", "fr")];

        let first = get(&url, &de).await;
        first.cache_status().assert_fwd("uri-miss", 200, true);
        caje.settle("/gen/v").await;
        let again = get(&url, &de).await;
        again.cache_status().assert_hit();
        support::assert_same_body(&again.body, &first.body, "de hit");

        let other = get(&url, &fr).await;
        let cs = other.cache_status();
        assert!(!cs.is_hit(), "fr was served the de variant: `{}`", cs.raw);
        assert_eq!(cs.fwd(), Some("vary-miss"), "`{}`", cs.raw);
        assert!(
            other.text().contains("fr"),
            "origin body should echo fr: {:?}",
            other.text()
        );

        // Both variants are now cached.
        caje.settle_n("/gen/v", 2).await;
        get(&url, &fr).await.cache_status().assert_hit();
        get(&url, &de).await.cache_status().assert_hit();
        assert_eq!(origin.requests("/gen/v").await, 2);
    })
    .await
}

#[tokio::test]
async fn vary_star_is_not_stored() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "");
        let r = caje.get(&gen("star", "cc=max-age%3D60&vary=*")).await;
        r.cache_status().assert_not_stored("vary-star");
        let r = caje.get(&gen("star", "cc=max-age%3D60&vary=*")).await;
        assert!(!r.cache_status().is_hit());
        assert_eq!(origin.requests("/gen/star").await, 2);
    })
    .await
}
