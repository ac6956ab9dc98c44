//! A cacheable response is fetched once: the first request is a stored miss, the second a
//! fresh hit served with `Age`, and the origin sees exactly one request.

mod support;

use support::{gen, within, Caje, Origin};

#[tokio::test]
async fn second_request_is_a_hit_with_age_and_ttl() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "");
        let path = gen("a", "cc=max-age%3D60");

        let first = caje.get(&path).await;
        assert_eq!(first.status, 200, "{}", first.text());
        first.cache_status().assert_fwd("uri-miss", 200, true);
        assert!(
            first.first_line().starts_with("path=/gen/a"),
            "origin body expected, got {:?}",
            first.first_line()
        );

        let second = caje.get(&path).await;
        assert_eq!(second.status, 200);
        let cs = second.cache_status();
        cs.assert_hit();
        let ttl = cs.ttl().unwrap();
        assert!(ttl <= 60, "ttl {ttl} exceeds max-age 60 ({})", cs.raw);
        let age = second
            .age()
            .unwrap_or_else(|| panic!("hit without a numeric Age: {:?}", second.headers));
        assert!(age <= 60, "Age {age} is larger than the max-age");
        support::assert_same_body(
            &second.body,
            &first.body,
            "hit body differs from the origin's",
        );
        assert_eq!(second.origin_version(), first.origin_version());

        assert_eq!(origin.requests("/gen/a").await, 1, "origin was asked twice");
    })
    .await
}

#[tokio::test]
async fn fast_page_goes_miss_then_hit() {
    within(30, async {
        let origin = Origin::start_with(&["--delay-scale", "0.1"]);
        let caje = Caje::start(&origin, "");

        let first = caje.get("/fast").await;
        assert_eq!(first.status, 200);
        first.cache_status().assert_fwd("uri-miss", 200, true);

        let second = caje.get("/fast").await;
        assert_eq!(second.status, 200);
        second.cache_status().assert_hit();
        assert!(second.age().is_some(), "hit without Age");
        support::assert_same_body(&second.body, &first.body, "body");
        assert_eq!(origin.requests("/fast").await, 1);
    })
    .await
}

#[tokio::test]
async fn head_after_get_is_a_hit_without_body() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "");
        let path = gen("h", "cc=max-age%3D60&bytes=1000");

        caje.store(&path).await;

        let head = support::request("HEAD", &caje.url(&path), &[], b"").await;
        assert_eq!(head.status, 200);
        head.cache_status().assert_hit();
        assert!(head.body.is_empty());
        assert_eq!(origin.requests("/gen/h").await, 1);
    })
    .await
}
