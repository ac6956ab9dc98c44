//! An origin body cut mid-way is not stored, and the client sees a broken transfer, never a
//! complete-looking 200. The next request goes to the origin again.

mod support;

use support::http::{try_request, ClientError};
use support::{gen, within, Caje, Origin};

#[tokio::test]
async fn origin_abort_mid_body_is_not_stored_and_client_sees_abort() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "[origin_timeouts]\nbody_idle_ms = 3000\n");
        let path = gen("cut", "cc=max-age%3D60&bytes=100000&abort_after=1000");

        let mut outcomes = Vec::new();
        for round in 1..=2 {
            let result = try_request("GET", &caje.url(&path), &[], b"").await;
            outcomes.push(match &result {
                Ok(r) => format!("round {round}: complete {} ({} bytes) {:?}", r.status, r.body.len(), r.header("cache-status")),
                Err(ClientError::Incomplete { status, got, headers, .. }) => format!(
                    "round {round}: incomplete {status} ({} bytes) {:?}",
                    got.len(),
                    headers.iter().find(|(n, _)| n == "cache-status")
                ),
                Err(e) => format!("round {round}: {e}"),
            });
            match result {
                // The expected outcome: the body ends before its framing says it is complete.
                Err(ClientError::Incomplete { .. }) => {}
                // Dropped before a head: also an aborted transfer.
                Err(ClientError::Io(_)) | Err(ClientError::BadHead(_)) => {}
                Ok(r) => assert_ne!(
                    r.status, 200,
                    "round {round}: a cut origin body arrived as a complete 200 ({} bytes of 100000)",
                    r.body.len()
                ),
            }
        }
        assert_eq!(
            origin.requests("/gen/cut").await,
            2,
            "the cut body must not have been stored; {outcomes:?}"
        );
        assert!(caje.list_entries("/gen/cut").await.is_empty());

        // caje is still healthy.
        let ok = caje.get(&gen("ok", "cc=max-age%3D60")).await;
        assert_eq!(ok.status, 200);
    })
    .await
}
