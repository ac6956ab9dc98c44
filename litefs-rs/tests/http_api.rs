//! The HTTP API client against a real local hyper server on 127.0.0.1:0: `/info`,
//! `/promote`, `/events` with mid-stream disconnects, backoff, and `PrimaryMonitor`.
#![cfg(feature = "http")]

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use litefs::http::{Backoff, Client, Event, HttpError, PrimaryMonitor};
use litefs::{Error, Role, Txid};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// What the test sends down an `/events` connection.
enum Msg {
    Data(&'static str),
    /// Fail the body mid-stream: hyper aborts the connection.
    Abort,
}

#[derive(Clone, Copy)]
enum EventsMode {
    /// Each connection's body is fed by the test through a channel it receives.
    Scripted,
    /// 200 with an empty body that ends at once.
    CloseAtOnce,
    /// An error status.
    Status(u16),
}

#[derive(Clone)]
struct Config {
    info: &'static str,
    info_status: u16,
    promote_status: u16,
    events: EventsMode,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            info: r#"{"clusterID":"LFSC1","isPrimary":false,"candidate":true,"path":"/litefs","primary":{"hostname":"node-a"}}"#,
            info_status: 200,
            promote_status: 200,
            events: EventsMode::Scripted,
        }
    }
}

struct TestServer {
    url: String,
    conns: mpsc::UnboundedReceiver<mpsc::UnboundedSender<Msg>>,
    event_requests: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestServer {
    /// The next `/events` connection's feed.
    async fn next_conn(&mut self) -> mpsc::UnboundedSender<Msg> {
        tokio::time::timeout(Duration::from_secs(3), self.conns.recv())
            .await
            .expect("client reconnected")
            .unwrap()
    }
}

type Body = BoxBody<Bytes, std::io::Error>;

fn full(status: u16, body: &'static str) -> Response<Body> {
    Response::builder()
        .status(status)
        .body(
            Full::new(Bytes::from_static(body.as_bytes()))
                .map_err(|n| match n {})
                .boxed(),
        )
        .unwrap()
}

async fn start(config: Config) -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (conns_tx, conns) = mpsc::unbounded_channel();
    let event_requests = Arc::new(AtomicUsize::new(0));
    let counter = event_requests.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (config, conns_tx, counter) = (config.clone(), conns_tx.clone(), counter.clone());
            let service = service_fn(move |req: Request<Incoming>| {
                let (config, conns_tx, counter) =
                    (config.clone(), conns_tx.clone(), counter.clone());
                async move {
                    let res = match (req.method().as_str(), req.uri().path()) {
                        ("GET", "/info") => full(config.info_status, config.info),
                        ("POST", "/promote") => full(config.promote_status, "not a candidate\n"),
                        ("GET", "/events") => {
                            counter.fetch_add(1, Ordering::SeqCst);
                            match config.events {
                                EventsMode::CloseAtOnce => full(200, ""),
                                EventsMode::Status(s) => full(s, "unavailable\n"),
                                EventsMode::Scripted => {
                                    let (tx, rx) = mpsc::unbounded_channel::<Msg>();
                                    let _ = conns_tx.send(tx);
                                    let frames =
                                        futures_util::stream::unfold(rx, |mut rx| async move {
                                            let frame = match rx.recv().await? {
                                                Msg::Data(s) => Ok(Frame::data(
                                                    Bytes::from_static(s.as_bytes()),
                                                )),
                                                Msg::Abort => Err(std::io::Error::other("abort")),
                                            };
                                            Some((frame, rx))
                                        });
                                    Response::new(BodyExt::boxed(StreamBody::new(frames)))
                                }
                            }
                        }
                        _ => full(404, "not found\n"),
                    };
                    Ok::<_, Infallible>(res)
                }
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    TestServer {
        url,
        conns,
        event_requests,
        task,
    }
}

fn fast_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(20), Duration::from_millis(100))
}

async fn next<S: futures_util::Stream<Item = litefs::Result<Event>> + Unpin>(
    s: &mut S,
) -> litefs::Result<Event> {
    tokio::time::timeout(Duration::from_secs(3), s.next())
        .await
        .expect("an item within 3 s")
        .expect("the stream never ends")
}

const INIT_REPLICA_A: &str =
    "{\"type\":\"init\",\"data\":{\"isPrimary\":false,\"hostname\":\"node-a\"}}\n";
const INIT_PRIMARY: &str = "{\"type\":\"init\",\"data\":{\"isPrimary\":true}}\n";
const TX_27: &str = "{\"type\":\"tx\",\"db\":\"caje.db\",\"data\":{\"txID\":\"0000000000000027\",\"postApplyChecksum\":\"83b0a1b2c3d4e5f6\",\"pageSize\":4096,\"commit\":2,\"timestamp\":\"2023-09-06T19:12:34.985Z\"}}\n";

#[tokio::test]
async fn info_and_promote() {
    let server = start(Config::default()).await;
    let client = Client::new(&server.url).unwrap();
    let info = client.info().await.unwrap();
    assert_eq!(info.cluster_id.as_deref(), Some("LFSC1"));
    assert!(!info.is_primary && info.candidate);
    assert_eq!(info.path.as_deref(), Some("/litefs"));
    assert_eq!(
        info.role(),
        Role::Replica {
            primary: "node-a".into()
        }
    );
    client.promote().await.unwrap();

    let refusing = start(Config {
        promote_status: 409,
        ..Config::default()
    })
    .await;
    match Client::new(&refusing.url).unwrap().promote().await {
        Err(Error::Http(HttpError::Status {
            path: "/promote",
            status: 409,
            body,
        })) => {
            assert_eq!(body, "not a candidate");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn info_failures_are_typed() {
    let bad_json = start(Config {
        info: "{\"nope\":1}",
        ..Config::default()
    })
    .await;
    let err = Client::new(&bad_json.url)
        .unwrap()
        .info()
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Http(HttpError::Decode { .. })),
        "{err:?}"
    );
    assert!(!err.is_retryable());

    let failing = start(Config {
        info_status: 503,
        ..Config::default()
    })
    .await;
    let err = Client::new(&failing.url).unwrap().info().await.unwrap_err();
    assert!(
        matches!(err, Error::Http(HttpError::Status { status: 503, .. })),
        "{err:?}"
    );
    assert!(err.is_retryable());

    // A port nobody listens on.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let err = Client::new(&url).unwrap().info().await.unwrap_err();
    assert!(
        matches!(err, Error::Http(HttpError::Request { .. })),
        "{err:?}"
    );
    assert!(err.is_retryable());
}

#[tokio::test]
async fn silent_server_hits_the_request_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s); // accept, never answer
        }
    });
    let client = Client::new(&url)
        .unwrap()
        .with_request_timeout(Duration::from_millis(150));
    let err = client.info().await.unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    hold.abort();
}

#[tokio::test]
async fn events_reconnect_after_disconnects_and_reemit_init() {
    let mut server = start(Config::default()).await;
    let client = Client::new(&server.url).unwrap();
    let mut events = client.events_with(fast_backoff());

    // Connection 1: a line split across chunks, a tx, an unknown type, a bad line, clean end.
    let pull = tokio::spawn(async move {
        let mut got = Vec::new();
        for _ in 0..9 {
            got.push(next(&mut events).await);
        }
        (got, events)
    });
    let conn1 = server.next_conn().await;
    conn1
        .send(Msg::Data("{\"type\":\"init\",\"data\":{\"isPri"))
        .unwrap();
    conn1
        .send(Msg::Data("mary\":false,\"hostname\":\"node-a\"}}\n"))
        .unwrap();
    conn1.send(Msg::Data(TX_27)).unwrap();
    conn1
        .send(Msg::Data("{\"type\":\"fancyNew\",\"data\":{\"n\":1}}\n\n"))
        .unwrap();
    conn1.send(Msg::Data("this is not json\n")).unwrap();
    drop(conn1);

    // Connection 2: a new init, then an abrupt failure mid-stream.
    let conn2 = server.next_conn().await;
    conn2.send(Msg::Data(INIT_PRIMARY)).unwrap();
    conn2
        .send(Msg::Data(
            "{\"type\":\"primaryChange\",\"data\":{\"isPrimary\":false,\"hostname\":\"node-b\"}}\n",
        ))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    conn2.send(Msg::Abort).unwrap();

    // Connection 3: init again.
    let conn3 = server.next_conn().await;
    conn3.send(Msg::Data(INIT_REPLICA_A)).unwrap();

    let (got, _events) = tokio::time::timeout(Duration::from_secs(5), pull)
        .await
        .unwrap()
        .unwrap();
    let mut it = got.into_iter();
    assert_eq!(
        it.next().unwrap().unwrap(),
        Event::from_json(INIT_REPLICA_A.trim()).unwrap(),
        "a line split across frames is reassembled"
    );
    match it.next().unwrap().unwrap() {
        Event::Tx(tx) => assert_eq!((tx.db.as_str(), tx.txid), ("caje.db", Txid::new(0x27))),
        other => panic!("{other:?}"),
    }
    match it.next().unwrap().unwrap() {
        Event::Unknown { kind, raw, .. } => {
            assert_eq!(kind, "fancyNew");
            assert_eq!(raw["data"]["n"], 1);
        }
        other => panic!("{other:?}"),
    }
    let bad = it.next().unwrap().unwrap_err();
    assert!(matches!(bad, Error::Parse(_)), "{bad:?}");
    let gone = it.next().unwrap().unwrap_err();
    assert!(
        matches!(gone, Error::Http(HttpError::Disconnected { .. })),
        "{gone:?}"
    );
    assert!(gone.is_retryable());
    assert_eq!(
        it.next().unwrap().unwrap().role(),
        Some(Role::Primary),
        "init re-emitted"
    );
    assert_eq!(
        it.next().unwrap().unwrap().role(),
        Some(Role::Replica {
            primary: "node-b".into()
        })
    );
    let aborted = it.next().unwrap().unwrap_err();
    assert!(
        matches!(
            aborted,
            Error::Http(HttpError::Disconnected { source: Some(_) })
        ),
        "{aborted:?}"
    );
    assert_eq!(
        it.next().unwrap().unwrap().role(),
        Some(Role::Replica {
            primary: "node-a".into()
        })
    );
    assert_eq!(server.event_requests.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn reconnects_back_off_with_a_cap_and_stop_when_the_stream_is_dropped() {
    let server = start(Config {
        events: EventsMode::CloseAtOnce,
        ..Config::default()
    })
    .await;
    let client = Client::new(&server.url).unwrap();
    let mut events = client.events_with(Backoff::new(
        Duration::from_millis(10),
        Duration::from_millis(40),
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_millis(800);
    let mut errors = 0;
    while let Ok(item) = tokio::time::timeout_at(deadline, events.next()).await {
        let err = item.unwrap().unwrap_err();
        assert!(err.is_retryable(), "{err:?}");
        errors += 1;
    }
    let connections = server.event_requests.load(Ordering::SeqCst);
    // Delays 0, 10, 20, 40, 40, ... ms: about 20 connections in 800 ms. A busy loop would
    // make thousands; an uncapped backoff (10, 20, 40, 80, 160, 320 ms) about 7.
    assert!(
        (12..=40).contains(&connections),
        "{connections} connections"
    );
    assert!(errors >= connections - 1);

    drop(events);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        server.event_requests.load(Ordering::SeqCst),
        connections,
        "nothing may reconnect after the stream is dropped"
    );
}

#[tokio::test]
async fn error_statuses_on_events_are_reported_and_retried() {
    let server = start(Config {
        events: EventsMode::Status(503),
        ..Config::default()
    })
    .await;
    let mut events = Client::new(&server.url)
        .unwrap()
        .events_with(fast_backoff());
    for _ in 0..3 {
        let err = next(&mut events).await.unwrap_err();
        assert!(
            matches!(&err, Error::Http(HttpError::Status { status: 503, .. })),
            "{err:?}"
        );
        assert!(err.is_retryable());
    }
    assert_eq!(server.event_requests.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn primary_monitor_follows_transitions_and_stops_when_dropped() {
    let mut server = start(Config::default()).await;
    let client = Client::new(&server.url).unwrap();
    let monitor = PrimaryMonitor::spawn_with(&client, fast_backoff());
    let mut rx = monitor.subscribe();
    assert_eq!(monitor.role(), Role::Unknown);

    let wait = |rx: &mut tokio::sync::watch::Receiver<Role>, want: Role| {
        let mut rx = rx.clone();
        async move {
            tokio::time::timeout(Duration::from_secs(3), rx.wait_for(|r| *r == want))
                .await
                .unwrap_or_else(|_| panic!("role never became {want:?}"))
                .unwrap()
                .clone()
        }
    };

    let conn1 = server.next_conn().await;
    conn1.send(Msg::Data(INIT_REPLICA_A)).unwrap();
    wait(
        &mut rx,
        Role::Replica {
            primary: "node-a".into(),
        },
    )
    .await;
    conn1.send(Msg::Data(TX_27)).unwrap();
    conn1
        .send(Msg::Data(
            "{\"type\":\"primaryChange\",\"data\":{\"isPrimary\":true}}\n",
        ))
        .unwrap();
    wait(&mut rx, Role::Primary).await;
    assert!(monitor.role().is_primary());

    drop(conn1); // the API went away
    wait(&mut rx, Role::Unknown).await;

    let conn2 = server.next_conn().await;
    conn2
        .send(Msg::Data(
            "{\"type\":\"init\",\"data\":{\"isPrimary\":false,\"hostname\":\"node-b\"}}\n",
        ))
        .unwrap();
    wait(
        &mut rx,
        Role::Replica {
            primary: "node-b".into(),
        },
    )
    .await;

    let before = server.event_requests.load(Ordering::SeqCst);
    drop(monitor);
    // The task is aborted: the channel closes and nothing reconnects, even once the server
    // ends the connection.
    let closed = tokio::time::timeout(Duration::from_secs(2), async {
        while rx.changed().await.is_ok() {}
    })
    .await;
    assert!(
        closed.is_ok(),
        "watch channel must close when the monitor is dropped"
    );
    drop(conn2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(server.event_requests.load(Ordering::SeqCst), before);
    assert!(server.conns.is_empty());
}
