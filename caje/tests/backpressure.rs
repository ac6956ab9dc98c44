//! Clients that do not read cannot stall anybody else (issue 13, defect 3).
//!
//! - `server.send_timeout_ms`: a client that stops reading a large hit is disconnected; a
//!   client that reads slowly but steadily gets the whole body.
//! - 200 non-reading clients (tiny receive windows) on large hits and on one large fill do
//!   not slow other clients' hits, misses and coalesced requests, and the fill still runs at
//!   the origin's speed although its first client never reads.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use support::http::open;
use support::{gen, within, Caje, Origin};

/// Opens a connection with a tiny receive buffer and sends `GET path`; the caller decides
/// whether to read.
async fn stalled_get(addr: SocketAddr, path: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let mut stream = socket.connect(addr).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    stream.write_all(req.as_bytes()).await.expect("send");
    stream
}

/// Reads everything the server sends until it closes; returns the byte count (head included).
async fn read_to_close(stream: &mut TcpStream, limit: Duration) -> u64 {
    let mut total = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return total,
            Ok(Ok(n)) => total += n as u64,
            Err(_) => panic!("the server did not close the connection within {limit:?}"),
        }
    }
}

/// Fetches `path` completely; returns the body length.
async fn fetch(caje: &Caje, path: &str) -> u64 {
    let resp = open("GET", &caje.url(path), &[], b"")
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    assert_eq!(resp.status, 200, "GET {path}");
    let (len, _) = resp
        .drain(0)
        .await
        .unwrap_or_else(|e| panic!("GET {path}: body: {e}"));
    len
}

#[tokio::test]
async fn send_timeout_cuts_a_stalled_reader_and_spares_a_slow_one() {
    within(60, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "[server]\nsend_timeout_ms = 500\n");
        const BODY: u64 = 16 * 1024 * 1024;
        let path = gen("st-big", &format!("cc=max-age%3D600&bytes={BODY}"));
        assert_eq!(fetch(&caje, &path).await, BODY);
        caje.settle(&path).await;

        // Never reads: once the socket buffers are full, no write progresses for 500 ms.
        let started = Instant::now();
        let mut stalled = stalled_get(caje.addr(), &path).await;
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let got = read_to_close(&mut stalled, Duration::from_secs(10)).await;
        println!(
            "stalled reader: received {got} of {BODY} body bytes, cut within {:?}",
            started.elapsed()
        );
        assert!(
            got < BODY,
            "a client that read nothing for 2.5 s was not disconnected ({got} bytes)"
        );

        // Reads at most 64 KiB every 10 ms: far slower than caje sends, for longer than the
        // timeout in total, but never stalled for 500 ms. (Default socket buffers: with a
        // tiny receive window, TCP's own persist timer can stall a reader for longer.)
        let mut slow = TcpStream::connect(caje.addr()).await.expect("connect");
        let req = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", caje.addr());
        slow.write_all(req.as_bytes()).await.expect("send");
        let started = Instant::now();
        let mut total = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match slow.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => total += n as u64,
                Err(e) => panic!("slow reader cut off after {total} bytes: {e}"),
            }
            if total > BODY {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let took = started.elapsed();
        println!("slow reader: {total} bytes (head included) in {took:?}");
        assert!(total > BODY, "slow reader got only {total} bytes");
        assert!(
            took > Duration::from_millis(1000),
            "the slow reader was not slower than the timeout ({took:?}); the test proves nothing"
        );
    })
    .await
}

/// Latencies of one round of other clients' requests: small and disk-sized hits, unique
/// misses and a burst of coalesced requests on a cold URL.
async fn other_requests(caje: &Caje, round: &str) -> Vec<Duration> {
    let mut tasks = Vec::new();
    let url = |p: &str| caje.url(p);
    for i in 0..20 {
        let hit_small = url(&gen(
            "bp-small",
            &format!("cc=max-age%3D600&bytes=1024&i={}", i % 4),
        ));
        let hit_disk = url(&gen(
            "bp-disk",
            &format!("cc=max-age%3D600&bytes=300000&i={}", i % 4),
        ));
        let miss = url(&gen(
            "bp-miss",
            &format!("cc=max-age%3D600&bytes=1024&round={round}&i={i}"),
        ));
        for u in [hit_small, hit_disk, miss] {
            tasks.push(tokio::spawn(async move {
                let t = Instant::now();
                let r = open("GET", &u, &[], b"").await.expect("head");
                assert_eq!(r.status, 200);
                r.drain(0).await.expect("body");
                t.elapsed()
            }));
        }
    }
    // Ten requests coalesced onto one 200 ms origin fetch.
    let coalesced = url(&gen(
        "bp-coalesced",
        &format!("cc=max-age%3D600&bytes=100000&delay_ms=200&round={round}"),
    ));
    for _ in 0..10 {
        let u = coalesced.clone();
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let r = open("GET", &u, &[], b"").await.expect("head");
            assert_eq!(r.status, 200);
            let (len, _) = r.drain(0).await.expect("body");
            assert_eq!(len, 100_000);
            t.elapsed()
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("request task"));
    }
    out.sort();
    out
}

fn p99(sorted: &[Duration]) -> Duration {
    let i = ((sorted.len() as f64) * 0.99).ceil() as usize;
    sorted[i.saturating_sub(1).min(sorted.len() - 1)]
}

#[tokio::test]
async fn two_hundred_non_readers_stall_nobody() {
    within(60, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "");
        // Large hits: far more than the socket buffers hold.
        const HIT: u64 = 8 * 1024 * 1024;
        let hits: Vec<String> = (0..2)
            .map(|i| gen("bp-hit", &format!("cc=max-age%3D600&bytes={HIT}&i={i}")))
            .collect();
        for p in &hits {
            assert_eq!(fetch(&caje, p).await, HIT);
            caje.settle(p).await;
        }
        // Warm the hits the other clients ask for.
        for i in 0..4 {
            for (name, bytes) in [("bp-small", 1024), ("bp-disk", 300_000)] {
                let p = gen(name, &format!("cc=max-age%3D600&bytes={bytes}&i={i}"));
                fetch(&caje, &p).await;
                caje.settle(&p).await;
            }
        }

        let before = other_requests(&caje, "before").await;

        // One large fill at a fixed origin speed: 16 MiB in 64 KiB chunks every 10 ms
        // (at least 2.56 s).
        const FILL: u64 = 16 * 1024 * 1024;
        let fill = gen(
            "bp-fill",
            &format!("cc=max-age%3D600&bytes={FILL}&chunk_bytes=65536&stream_delay_ms=10"),
        );
        let origin_time = Duration::from_millis(10 * (FILL / 65536));
        let mut stalled = Vec::new();
        // The fill's first client never reads.
        let fill_started = Instant::now();
        stalled.push(stalled_get(caje.addr(), &fill).await);
        support::eventually(10, "the fill reaches the origin", || async {
            origin.requests("/gen/bp-fill").await == 1
        })
        .await;
        for _ in 0..49 {
            stalled.push(stalled_get(caje.addr(), &fill).await);
        }
        for i in 0..150 {
            stalled.push(stalled_get(caje.addr(), &hits[i % 2]).await);
        }
        // A reading client coalesced onto the same fill gets it at the origin's pace.
        let follower = {
            let url = caje.url(&fill);
            tokio::spawn(async move {
                let t = Instant::now();
                let r = open("GET", &url, &[], b"").await.expect("head");
                let (len, _) = r.drain(0).await.expect("coalesced body");
                (len, t.elapsed())
            })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;

        let during = other_requests(&caje, "during").await;

        let (len, follower_took) = follower.await.expect("follower");
        assert_eq!(len, FILL);
        // The fill is committed although its first client read nothing.
        support::eventually(20, "the large fill is stored", || async {
            caje.list_entries("/gen/bp-fill")
                .await
                .iter()
                .any(|e| e["on_disk"] == true)
        })
        .await;
        let fill_took = fill_started.elapsed();
        let fill_hit = open("GET", &caje.url(&fill), &[], b"").await.expect("head");
        assert!(fill_hit.cache_status().is_hit(), "the fill was not stored");
        drop(fill_hit);

        let (p_before, p_during) = (p99(&before), p99(&during));
        println!(
            "other requests ({} each): p99 before {p_before:?} (max {:?}), p99 with 200 \
             non-readers {p_during:?} (max {:?})",
            before.len(),
            before.last().unwrap(),
            during.last().unwrap()
        );
        println!(
            "large fill: origin needs at least {origin_time:?}; stored after {fill_took:?}, \
             coalesced reader done in {follower_took:?}"
        );
        assert!(
            p_during < Duration::from_secs(2),
            "other clients were slowed by non-readers: p99 {p_during:?} (before {p_before:?})"
        );
        assert!(
            fill_took < origin_time + Duration::from_secs(6),
            "the fill did not run at the origin's speed: {fill_took:?} for {origin_time:?}"
        );
        assert_eq!(origin.requests("/gen/bp-fill").await, 1);
        drop(stalled);
    })
    .await
}
