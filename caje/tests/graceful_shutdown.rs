//! SIGTERM lets in-flight requests finish, then caje exits 0.

mod support;

use std::time::Duration;

use support::http::try_request;
use support::{eventually, gen, within, Caje, Origin};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_request_then_exits_zero() {
    within(40, async {
        let origin = Origin::start();
        let mut caje = Caje::start(&origin, "");
        let url = caje.url(&gen(
            "inflight",
            "cc=max-age%3D60&delay_ms=1500&bytes=10000",
        ));
        let req = tokio::spawn(async move { try_request("GET", &url, &[], b"").await });

        // Wait until the request is at the origin, i.e. really in flight inside caje.
        let o = &origin;
        eventually(10, "request reaches the origin", || async move {
            o.requests("/gen/inflight").await == 1
        })
        .await;
        caje.sigterm();

        let resp = req
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("in-flight request failed after SIGTERM: {e}"));
        assert_eq!(resp.status, 200);
        assert_eq!(resp.body.len(), 10_000);

        let st = tokio::task::block_in_place(|| caje.wait_exit(Duration::from_secs(15)))
            .unwrap_or_else(|| panic!("caje still running 15 s after SIGTERM"));
        assert_eq!(
            st.code(),
            Some(0),
            "exit status {st}; stderr:\n{}",
            caje.stderr()
        );
    })
    .await
}

#[tokio::test]
async fn idle_sigterm_exits_zero() {
    within(30, async {
        let origin = Origin::start();
        let mut caje = Caje::start(&origin, "");
        caje.get(&gen("x", "cc=max-age%3D60")).await;
        let st = caje.stop();
        assert_eq!(
            st.code(),
            Some(0),
            "exit status {st}; stderr:\n{}",
            caje.stderr()
        );
    })
    .await
}

/// Regression (issue 12, convergence seeds 3, 15, 16): a SIGTERM while a storable body is still
/// streaming from the origin into the cache, its client gone. The runtime's shutdown dropped
/// the fill's body; the body's drop spawns the drain of the rest, a runtime shutting down
/// drops that new task at once, whose drop spawned again: the process died of a stack
/// overflow (SIGABRT) instead of exiting 0.
#[tokio::test]
async fn sigterm_while_a_fill_streams_without_its_client_exits_zero() {
    within(60, async {
        let origin = Origin::start();
        let mut caje = Caje::start(&origin, "[server]\nshutdown_grace_ms = 500\n");
        // 40 chunks of 1 KiB, 200 ms apart: the fill goes on for 8 s.
        let path = gen(
            "streaming",
            "cc=max-age%3D60&bytes=40960&chunk_bytes=1024&stream_delay_ms=200",
        );
        let mut streams = Vec::new();
        for _ in 0..3 {
            let mut s = support::http::open("GET", &caje.url(&path), &[], b"")
                .await
                .expect("response head");
            assert_eq!(s.status, 200);
            s.chunk().await.expect("a first chunk");
            streams.push(s);
        }
        // The clients go; the fill does not.
        drop(streams);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let st = caje.stop();
        assert_eq!(
            st.code(),
            Some(0),
            "exit status {st}; stderr:\n{}",
            caje.stderr()
        );
        assert!(
            !caje.stderr().contains("overflow"),
            "stderr:\n{}",
            caje.stderr()
        );
    })
    .await
}

/// SIGTERM writes the manifest's queue before the process exits, and stops its writer first:
/// a row still waiting for its batch is not lost, and no COMMIT is cut in the middle (on a
/// LiteFS replica that makes LiteFS itself exit: docs/cluster.md, "A node killed during a
/// HALT"). Here the node is a replica (`litefs = "on"`, `.primary` names another node) whose
/// HALT the test holds when SIGTERM arrives and releases 1 s later: the last flush must wait
/// for it. Before, the process exited while its writer waited, and the row was lost.
#[tokio::test]
async fn sigterm_writes_the_manifest_queue_before_exiting() {
    use std::os::fd::AsFd;
    within(60, async {
        let origin = Origin::start();
        let dir = support::NodeDir::new();
        std::fs::write(dir.root().join(".primary"), "other-node\n").unwrap();
        let mut caje = Caje::start_in(
            dir.clone(),
            support::CajeConfig::for_origin(
                &origin.base(),
                "[populate]\nenabled = false\n[manifest]\nlitefs = \"on\"\nflush_interval_ms = 20\n\
                 halt_timeout_ms = 4000\n",
            ),
        );
        let mut lock = dir.db().into_os_string();
        lock.push("-lock");
        let ours = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&lock)
            .unwrap();
        litefs::ofd::try_lock(
            ours.as_fd(),
            litefs::ofd::LockKind::Write,
            litefs::ofd::LockRange::HALT,
        )
        .expect("take HALT");
        assert_eq!(
            caje.get(&gen("queued", "cc=max-age%3D600")).await.status,
            200
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(1));
            drop(ours);
        });
        let st = caje.stop();
        releaser.join().unwrap();
        assert_eq!(
            st.code(),
            Some(0),
            "exit status {st}; stderr:\n{}",
            caje.stderr()
        );
        std::fs::remove_file(dir.root().join(".primary")).unwrap();
        let db = dir.db();
        let rows = tokio::task::spawn_blocking(move || caje::manifest::Manifest::open(&db))
            .await
            .unwrap()
            .unwrap()
            .list()
            .await
            .unwrap();
        assert_eq!(
            rows.iter()
                .filter(|r| r.path.starts_with("/gen/queued"))
                .count(),
            1,
            "the queued row was lost at exit: {rows:?}\n{}",
            caje.stderr()
        );
    })
    .await
}
