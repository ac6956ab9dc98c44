//! The memory tier: a small body served from disk once is then served from RAM (same bytes),
//! bounded by `cache.memory_bytes`, and disabled with 0.

mod support;

use support::{gen, within, Caje, Origin};

#[tokio::test]
async fn small_hits_are_kept_in_memory_and_byte_identical() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "[cache]\nmemory_bytes = 100000\n");
        let small = gen("mem", "cc=max-age%3D300&bytes=30000");
        let first = caje.store(&small).await;
        let from_disk = caje.get(&small).await;
        from_disk.cache_status().assert_hit();
        assert_eq!(caje.stat("memory_entries").await, 1);
        let from_memory = caje.get(&small).await;
        from_memory.cache_status().assert_hit();
        support::assert_same_body(&from_memory.body, &first.body, "memory hit");
        // A range is answered from the memory copy too.
        let r = support::get(&caje.url(&small), &[("range", "bytes=10-19")]).await;
        assert_eq!(r.status, 206);
        assert_eq!(r.body, first.body[10..20]);

        // The budget holds: the bodies get three quarters of `memory_bytes` (a quarter is
        // for the hot entries' metadata), and four 30 kB bodies do not fit in those 75 kB.
        for i in 0..4 {
            let p = gen(&format!("mem{i}"), "cc=max-age%3D300&bytes=30000");
            caje.store(&p).await;
            caje.get(&p).await.cache_status().assert_hit();
        }
        assert!(caje.stat("memory_bytes").await <= 75_000);
        assert_eq!(caje.stat("memory_entries").await, 2);
        // The hot entries' metadata is counted, within its quarter.
        assert_eq!(caje.stat("meta_cap_bytes").await, 25_000);
        let meta = caje.stat("meta_bytes").await;
        assert!(meta > 0 && meta <= 25_000, "meta_bytes {meta}");
        assert!(caje.stat("meta_entries").await >= 1);
        assert_eq!(origin.requests("/gen/mem").await, 1);
    })
    .await
}

#[tokio::test]
async fn zero_budget_serves_every_hit_from_disk() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "[cache]\nmemory_bytes = 0\n");
        let p = gen("nomem", "cc=max-age%3D300&bytes=1000");
        caje.store(&p).await;
        caje.get(&p).await.cache_status().assert_hit();
        assert_eq!(caje.stat("memory_entries").await, 0);
    })
    .await
}
