//! `GET /_caje/list` for large caches (issue 9, item 10): pages with a `next` cursor, the
//! `host`, `prefix` and `stale` filters, and read-your-writes (a page this node cached is
//! listed as soon as its response is complete, with the default manifest batching).

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;
use support::{gen, within, Caje, Origin};

async fn list(caje: &Caje, query: &str) -> Value {
    let r = caje.admin("GET", &format!("/_caje/list?{query}")).await;
    assert_eq!(r.status, 200, "{query}: {}", r.text());
    r.json()
}

fn paths(page: &Value) -> Vec<String> {
    page["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["path"].as_str().expect("path").to_owned())
        .collect()
}

#[tokio::test]
async fn a_page_is_listed_as_soon_as_its_response_is_complete() {
    within(60, async {
        let origin = Origin::start();
        // The default manifest batching (rows wait up to 100 ms before they are written).
        let caje = Caje::start(&origin, "");
        for i in 0..20 {
            let path = gen(&format!("ryw{i}"), "cc=max-age%3D300&bytes=3000");
            let r = caje.get(&path).await;
            assert_eq!(r.status, 200);
            let page = list(&caje, &format!("prefix=/gen/ryw{i}%3F")).await;
            assert_eq!(paths(&page), vec![path.clone()], "{page}");
            assert_eq!(page["entries"][0]["on_disk"], true, "{page}");
        }
    })
    .await
}

#[tokio::test]
async fn pages_follow_the_cursor_and_filters_select_rows() {
    within(60, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "");
        let mut want = BTreeSet::new();
        for i in 0..25 {
            let path = gen(&format!("pg{i:02}"), "cc=max-age%3D300");
            assert_eq!(caje.get_site(&path).await.status, 200);
            want.insert(path);
        }
        // Another host, and pages that go stale at once.
        assert_eq!(
            caje.get(&gen("other", "cc=max-age%3D300")).await.status,
            200
        );
        for i in 0..3 {
            let r = caje
                .get_site(&gen(&format!("st{i}"), "cc=max-age%3D1"))
                .await;
            assert_eq!(r.status, 200);
        }

        // Three pages of at most 10 rows of the site's /gen/pg pages, in order, no repeats.
        let mut got = Vec::new();
        let mut query = "host=caje.test&prefix=/gen/pg&limit=10".to_owned();
        let mut sizes = Vec::new();
        loop {
            let page = list(&caje, &query).await;
            sizes.push(page["count"].as_u64().unwrap());
            got.extend(paths(&page));
            match page["next"].as_str() {
                Some(next) => {
                    query = format!("host=caje.test&prefix=/gen/pg&limit=10&after={next}")
                }
                None => break,
            }
        }
        assert_eq!(sizes, vec![10, 10, 5]);
        assert_eq!(got, want.iter().cloned().collect::<Vec<_>>());

        // The default limit holds everything here; `host` leaves the other host out.
        let all = list(&caje, "").await;
        assert_eq!(all["count"], 29, "{all}");
        assert!(all["next"].is_null(), "{all}");
        let site = list(&caje, "host=caje.test").await;
        assert_eq!(site["count"], 28, "{site}");
        let one = list(&caje, "limit=1").await;
        assert_eq!(one["count"], 1);
        assert!(one["next"].is_string(), "{one}");

        // `stale=true`: only what is no longer fresh.
        tokio::time::sleep(Duration::from_millis(2100)).await;
        let stale = list(&caje, "stale=true").await;
        let stale_paths: Vec<String> = paths(&stale);
        assert_eq!(stale_paths.len(), 3, "{stale}");
        assert!(
            stale_paths.iter().all(|p| p.starts_with("/gen/st")),
            "{stale}"
        );
        assert!(stale["entries"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["fresh"] == false));

        for bad in ["limit=0", "limit=20000", "after=nothex", "stale=maybe"] {
            let r = caje.admin("GET", &format!("/_caje/list?{bad}")).await;
            assert_eq!(r.status, 400, "{bad}: {}", r.text());
        }
    })
    .await
}
