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
