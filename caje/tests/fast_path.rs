//! The fast path (`caje::fast`): fresh hits on plain GET/HEAD requests answered without
//! hyper. Each test speaks raw HTTP/1.1 on one keep-alive connection, so it sees what the
//! fast path writes and where it hands a connection to hyper.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use support::{gen, within, Caje, Origin};

/// One response read off a keep-alive connection.
#[derive(Debug)]
struct Reply {
    status: u16,
    /// Lower-case names; repeated fields joined with "\n" in order.
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    fn cache_status(&self) -> &str {
        self.header("cache-status").unwrap_or("")
    }

    fn is_hit(&self) -> bool {
        self.cache_status().split(';').any(|p| p.trim() == "hit")
    }
}

struct Conn {
    reader: BufReader<TcpStream>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        Conn {
            reader: BufReader::new(stream),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.reader.get_mut().write_all(bytes).await.unwrap();
    }

    /// Reads one response (`Content-Length` framing; none for a HEAD or a 304).
    async fn reply(&mut self, head_request: bool) -> Reply {
        let mut line = String::new();
        self.reader.read_line(&mut line).await.unwrap();
        let status = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("status line {line:?}"));
        assert!(line.starts_with("HTTP/1.1 "), "{line:?}");
        let mut headers: BTreeMap<String, String> = BTreeMap::new();
        loop {
            let mut l = String::new();
            self.reader.read_line(&mut l).await.unwrap();
            let l = l.trim_end_matches("\r\n");
            if l.is_empty() {
                break;
            }
            let (n, v) = l.split_once(':').unwrap_or_else(|| panic!("field {l:?}"));
            headers
                .entry(n.to_ascii_lowercase())
                .and_modify(|e| {
                    e.push('\n');
                    e.push_str(v.trim());
                })
                .or_insert_with(|| v.trim().to_owned());
        }
        let len: usize = headers
            .get("content-length")
            .map_or(0, |v| v.parse().unwrap());
        let mut body = vec![
            0;
            if head_request || status == 304 {
                0
            } else {
                len
            }
        ];
        self.reader.read_exact(&mut body).await.unwrap();
        Reply {
            status,
            headers,
            body,
        }
    }

    async fn get(&mut self, target: &str, extra: &str) -> Reply {
        let req = format!("GET {target} HTTP/1.1\r\nHost: site.test\r\n{extra}\r\n");
        self.send(req.as_bytes()).await;
        self.reply(false).await
    }

    /// Whether the server closes the connection within `wait`.
    async fn closed_within(&mut self, wait: Duration) -> bool {
        let mut b = [0u8; 1];
        matches!(
            tokio::time::timeout(wait, self.reader.read(&mut b)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}

/// A page with repeated fields, validators and a body of `bytes` bytes.
fn page(name: &str, bytes: usize) -> String {
    gen(
        name,
        &format!(
            "cc=max-age%3D300&etag=v1&header=Link:%3C/a%3E&header=Link:%3C/b%3E&header=X-Thing:one&bytes={bytes}"
        ),
    )
}

/// Stores `target` and waits until it is a hit, on a connection of its own: the miss hands
/// its connection to hyper for good, so the caller's connection must not be the one that
/// missed.
async fn warm(addr: SocketAddr, target: &str) -> Reply {
    let mut conn = Conn::open(addr).await;
    let first = conn.get(target, "").await;
    assert_eq!(first.status, 200);
    assert!(!first.is_hit(), "{first:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = Conn::open(addr).await.get(target, "").await;
        if r.is_hit() {
            return r;
        }
        assert!(Instant::now() < deadline, "never a hit: {r:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Drops what legitimately differs between two answers given at different moments.
fn comparable(r: &Reply) -> (u16, BTreeMap<String, String>, Vec<u8>) {
    let mut h = r.headers.clone();
    h.remove("date");
    h.remove("age");
    let cs = h.remove("cache-status").unwrap_or_default();
    // `ttl=` counts down.
    let cs: Vec<&str> = cs.split(';').filter(|p| !p.contains("ttl=")).collect();
    h.insert("cache-status".into(), cs.join(";"));
    (r.status, h, r.body.clone())
}

#[tokio::test]
async fn a_fast_hit_answers_exactly_as_the_full_path_does() {
    within(60, async {
        let origin = Origin::start();
        let fast = Caje::start(&origin, "");
        let slow = Caje::start(&origin, "[server]\nfast_path = false\n");
        let target = page("same", 3000);
        warm(fast.addr(), &target).await;
        warm(slow.addr(), &target).await;
        let fast_before = fast.stat("fast_hits").await;
        let mut a = Conn::open(fast.addr()).await;
        let mut b = Conn::open(slow.addr()).await;
        let from_fast = a.get(&target, "").await;
        let from_slow = b.get(&target, "").await;
        assert_eq!(comparable(&from_fast), comparable(&from_slow));
        for name in [
            "age",
            "date",
            "etag",
            "via",
            "accept-ranges",
            "content-length",
        ] {
            assert!(from_fast.header(name).is_some(), "{name}: {from_fast:?}");
        }
        assert_eq!(from_fast.header("link"), Some("</a>\n</b>"));
        // HEAD: the same head, no body.
        let head = format!("HEAD {target} HTTP/1.1\r\nHost: site.test\r\n\r\n");
        a.send(head.as_bytes()).await;
        let ha = a.reply(true).await;
        b.send(head.as_bytes()).await;
        let hb = b.reply(true).await;
        assert!(ha.is_hit() && hb.is_hit(), "{ha:?} {hb:?}");
        assert_eq!(comparable(&ha), comparable(&hb));
        assert_eq!(ha.header("content-length"), Some("3000"));
        // Counted as hits by both; only the first answered them on the fast path.
        let fast_hits = fast.stat("fast_hits").await - fast_before;
        assert_eq!(fast_hits, 2, "the GET and the HEAD");
        assert_eq!(slow.stat("fast_hits").await, 0);
        assert!(slow.stat("hits").await >= 2);
        assert_eq!(origin.requests("/gen/same").await, 2, "one fill per node");
    })
    .await
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_with_a_miss_between() {
    within(60, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "");
        let hot = page("hot", 1000);
        let cold = page("cold", 2000);
        warm(caje.addr(), &hot).await;
        let before = caje.stats().await;
        let mut c = Conn::open(caje.addr()).await;
        // Hit, miss (passed to the full path alone), hit, in one write.
        let mut burst = String::new();
        for t in [&hot, &cold, &hot] {
            burst.push_str(&format!("GET {t} HTTP/1.1\r\nHost: site.test\r\n\r\n"));
        }
        c.send(burst.as_bytes()).await;
        let (r1, r2, r3) = (
            c.reply(false).await,
            c.reply(false).await,
            c.reply(false).await,
        );
        assert!(r1.is_hit() && r1.body.len() == 1000, "{r1:?}");
        assert!(
            !r2.is_hit() && r2.status == 200 && r2.body.len() == 2000,
            "{r2:?}"
        );
        assert!(r3.is_hit() && r3.body.len() == 1000, "{r3:?}");
        // Both hits on the fast path, the miss through the full path; the connection stayed.
        let after = caje.stats().await;
        let delta = |k: &str| after[k].as_u64().unwrap() - before[k].as_u64().unwrap();
        assert_eq!(delta("fast_hits"), 2);
        // The miss, and the stats request that read these figures.
        assert_eq!(delta("fast_passed"), 2);
        assert_eq!(delta("fast_handovers"), 0);
        assert_eq!(origin.requests("/gen/hot").await, 1);
        assert_eq!(origin.requests("/gen/cold").await, 1);
    })
    .await
}

#[tokio::test]
async fn a_head_that_arrives_in_pieces_is_served() {
    within(60, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "");
        let target = page("pieces", 500);
        warm(caje.addr(), &target).await;
        let before = caje.stat("fast_hits").await;
        let mut c = Conn::open(caje.addr()).await;
        let req = format!(
            "GET {target} HTTP/1.1\r\nHost: site.test\r\nX-Long: {}\r\n\r\n",
            "a".repeat(100)
        );
        for piece in req.as_bytes().chunks(17) {
            c.send(piece).await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let r = c.reply(false).await;
        assert!(r.is_hit() && r.body.len() == 500, "{r:?}");
        // And the connection goes on, on the fast path.
        let r = c.get(&target, "").await;
        assert!(r.is_hit(), "{r:?}");
        assert_eq!(caje.stat("fast_hits").await - before, 2);
    })
    .await
}

#[tokio::test]
async fn conditionals_ranges_and_credentials_take_the_full_path_on_the_same_connection() {
    within(60, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "");
        let target = page("cond", 800);
        warm(caje.addr(), &target).await;
        let before = caje.stat("fast_hits").await;
        let mut c = Conn::open(caje.addr()).await;
        let hit = c.get(&target, "").await;
        assert!(hit.is_hit(), "{hit:?}");
        let etag = hit.header("etag").unwrap().to_owned();
        assert_eq!(caje.stat("fast_hits").await - before, 1);
        let r = c.get(&target, &format!("If-None-Match: {etag}\r\n")).await;
        assert_eq!(r.status, 304, "{r:?}");
        let r = c.get(&target, "Range: bytes=0-9\r\n").await;
        assert_eq!((r.status, r.body.len()), (206, 10), "{r:?}");
        let r = c.get(&target, "").await;
        assert!(r.is_hit() && r.body.len() == 800, "{r:?}");
        // The 304 and the 206 came from the full path, one request at a time: the hit after
        // them is on the fast path again.
        assert_eq!(caje.stat("fast_hits").await - before, 2);
        // Credentials: the origin answers (the stored copy is not for them), as before.
        let r = c.get(&target, "Authorization: Bearer x\r\n").await;
        assert!(!r.is_hit(), "{r:?}");
        // A page stored with Vary is selected by the full path: each variant its own.
        let varied = gen("varied", "cc=max-age%3D300&vary=Accept-Language&bytes=100");
        let mut v = Conn::open(caje.addr()).await;
        let en = v.get(&varied, "Accept-Language: en\r\n").await;
        assert!(!en.is_hit());
        let de = v.get(&varied, "Accept-Language: de\r\n").await;
        assert!(!de.is_hit(), "another variant is not a hit: {de:?}");
        assert_eq!(origin.requests("/gen/varied").await, 2);
    })
    .await
}

#[tokio::test]
async fn an_idle_connection_is_closed_at_the_header_read_timeout() {
    within(60, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "[limits]\nheader_read_timeout_ms = 400\n");
        let target = page("idle", 100);
        warm(caje.addr(), &target).await;
        let mut c = Conn::open(caje.addr()).await;
        let r = c.get(&target, "").await;
        assert!(r.is_hit());
        let waited = Instant::now();
        assert!(
            c.closed_within(Duration::from_secs(5)).await,
            "idle keep-alive never closed"
        );
        assert!(
            waited.elapsed() >= Duration::from_millis(300),
            "closed too early"
        );
        // A head that stops half-way is cut off too.
        let mut c = Conn::open(caje.addr()).await;
        c.send(format!("GET {target} HTTP/1.1\r\nHost: si").as_bytes())
            .await;
        assert!(
            c.closed_within(Duration::from_secs(5)).await,
            "stalled head never closed"
        );
    })
    .await
}

#[tokio::test]
async fn a_shutdown_closes_idle_fast_connections_at_once() {
    within(60, async {
        let origin = Origin::start();
        let mut caje = Caje::start(&origin, "[server]\nshutdown_grace_ms = 20000\n");
        let target = page("bye", 100);
        warm(caje.addr(), &target).await;
        let mut c = Conn::open(caje.addr()).await;
        // An idle keep-alive connection on the fast path.
        assert!(c.get(&target, "").await.is_hit());
        let stopped = Instant::now();
        caje.sigterm();
        assert!(
            c.closed_within(Duration::from_secs(5)).await,
            "the idle connection stayed open"
        );
        let status = caje.wait_exit(Duration::from_secs(10)).expect("caje exits");
        assert_eq!(status.code(), Some(0), "{status}");
        assert!(
            stopped.elapsed() < Duration::from_secs(10),
            "shutdown waited for an idle connection: {:?}",
            stopped.elapsed()
        );
    })
    .await
}

/// A kept entry file is sent by `sendfile`, unread, where that cannot wait for the disk; a
/// write to it since its CRC was checked (here: bytes of the body flipped in place) changes
/// its stamp, so the next hit reads and checks it again, finds it corrupt, and goes to the
/// origin. `sends`: whether the hits before the damage are expected to use `sendfile`.
async fn kept_file_is_checked_again_after_a_write(
    dir: std::sync::Arc<support::NodeDir>,
    sends: bool,
) {
    let origin = Origin::start();
    // A memory tier too small for the body (it gets three quarters of 16 KiB), so every hit
    // is served from the entry file; the page's compact metadata fits in the rest.
    let cfg = support::CajeConfig::for_origin(
        &origin.base(),
        "[cache]\nmemory_bytes = 16384\n[populate]\nenabled = false\n",
    );
    let caje = Caje::start_in(dir, cfg);
    let target = page("kept", 20_000);
    let good = warm(caje.addr(), &target).await;
    let mut c = Conn::open(caje.addr()).await;
    // The first hit (in `warm`) read, checked and kept the file; these send it.
    for _ in 0..3 {
        let r = c.get(&target, "").await;
        assert!(r.is_hit(), "{r:?}");
        assert_eq!(r.body, good.body);
    }
    let sent = caje.stat("fast_sendfile").await;
    if sends {
        assert_eq!(sent, 3);
    }
    let files = support::files_with_suffix(&caje.cache_dir(), ".entry");
    assert_eq!(files.len(), 1, "{files:?}");
    support::flip_middle_bytes(&files[0], 16);
    let corrupt_before = caje.stat("corrupt_entries").await;
    let r = Conn::open(caje.addr()).await.get(&target, "").await;
    assert!(
        !r.is_hit(),
        "a file changed since its check was sent: {r:?}"
    );
    assert_eq!(r.body, good.body, "the origin's body");
    assert!(caje.stat("corrupt_entries").await > corrupt_before);
    assert_eq!(caje.stat("fast_sendfile").await, sent);
    assert_eq!(origin.requests("/gen/kept").await, 2);
}

/// Whether this kernel has `cachestat(2)` (Linux 6.5), which lets caje `sendfile` from a
/// disk when the page cache holds the body.
fn has_cachestat() -> bool {
    // SAFETY: an invalid descriptor and null pointers: the kernel answers EBADF (or ENOSYS
    // without the call) and touches no memory.
    let rc = unsafe {
        libc::syscall(
            451,
            -1,
            std::ptr::null::<u8>(),
            std::ptr::null_mut::<u8>(),
            0u32,
        )
    };
    rc != 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::ENOSYS)
}

#[tokio::test]
async fn on_tmpfs_a_kept_file_written_since_its_check_is_not_sent() {
    let shm = std::path::Path::new("/dev/shm");
    if !shm.is_dir() {
        eprintln!("SKIP: no /dev/shm here, the tmpfs case cannot run");
        return;
    }
    within(
        60,
        kept_file_is_checked_again_after_a_write(support::NodeDir::new_in(shm), true),
    )
    .await
}

#[tokio::test]
async fn in_the_temp_dir_a_kept_file_written_since_its_check_is_not_sent() {
    let sends = has_cachestat();
    if !sends {
        eprintln!("no cachestat(2) here: from a disk the body is read and checked on every hit");
    }
    within(
        60,
        kept_file_is_checked_again_after_a_write(support::NodeDir::new(), sends),
    )
    .await
}

/// A request with a body is forwarded by hyper, which then serves the rest of the
/// connection: the fast path does not frame bodies.
#[tokio::test]
async fn a_request_with_a_body_hands_the_connection_to_hyper() {
    within(60, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "");
        let target = page("body", 300);
        warm(caje.addr(), &target).await;
        let hits = caje.stat("fast_hits").await;
        let handovers = caje.stat("fast_handovers").await;
        let mut c = Conn::open(caje.addr()).await;
        assert!(c.get(&target, "").await.is_hit());
        let post = "POST /gen/posted HTTP/1.1\r\nHost: site.test\r\nContent-Length: 5\r\n\r\nhello";
        c.send(post.as_bytes()).await;
        let r = c.reply(false).await;
        assert_eq!(r.status, 200, "{r:?}");
        let r = c.get(&target, "").await;
        assert!(r.is_hit() && r.body.len() == 300, "{r:?}");
        assert_eq!(
            caje.stat("fast_hits").await - hits,
            1,
            "the hit after the POST is hyper's"
        );
        assert_eq!(caje.stat("fast_handovers").await - handovers, 1);
        assert_eq!(origin.requests("/gen/posted").await, 1);
    })
    .await
}

/// A miss passed to the full path streams as it always did, and a shutdown while it is at the
/// origin lets it finish, then closes the connection.
#[tokio::test]
async fn a_shutdown_during_a_passed_miss_lets_it_finish() {
    within(60, async {
        let origin = Origin::start();
        let mut caje = Caje::start(&origin, "[server]\nshutdown_grace_ms = 20000\n");
        let mut c = Conn::open(caje.addr()).await;
        let slow = gen("slowmiss", "cc=max-age%3D300&delay_ms=600&bytes=5000");
        c.send(format!("GET {slow} HTTP/1.1\r\nHost: site.test\r\n\r\n").as_bytes())
            .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        caje.sigterm();
        let r = c.reply(false).await;
        assert_eq!((r.status, r.body.len()), (200, 5000), "{r:?}");
        assert!(
            c.closed_within(Duration::from_secs(5)).await,
            "not closed after it"
        );
        let status = caje.wait_exit(Duration::from_secs(10)).expect("caje exits");
        assert_eq!(status.code(), Some(0), "{status}");
    })
    .await
}

/// A page stored with `Vary` is answered on the fast path too, each request from its own
/// variant (selected from its headers as the origin would see them), and exactly as the full
/// path answers it.
#[tokio::test]
async fn each_variant_of_a_varied_page_is_a_fast_hit_for_its_own_requests() {
    within(60, async {
        let origin = Origin::start();
        let fast = Caje::start(&origin, "");
        let slow = Caje::start(&origin, "[server]\nfast_path = false\n");
        let varied = gen("langs", "cc=max-age%3D300&vary=Accept-Language");
        let mut stored = BTreeMap::new();
        for node in [&fast, &slow] {
            for lang in ["en", "de"] {
                let h = format!("Accept-Language: {lang}\r\n");
                let r = Conn::open(node.addr()).await.get(&varied, &h).await;
                assert!(!r.is_hit(), "{r:?}");
                stored.insert(lang, r.body.clone());
            }
        }
        assert_ne!(stored["en"], stored["de"], "the origin echoes the variant");
        // Wait for both fills to be hits.
        for node in [&fast, &slow] {
            for lang in ["en", "de"] {
                let h = format!("Accept-Language: {lang}\r\n");
                let deadline = Instant::now() + Duration::from_secs(10);
                while !Conn::open(node.addr())
                    .await
                    .get(&varied, &h)
                    .await
                    .is_hit()
                {
                    assert!(Instant::now() < deadline, "{lang} never a hit");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        let before = fast.stats().await;
        let mut a = Conn::open(fast.addr()).await;
        let mut b = Conn::open(slow.addr()).await;
        for lang in ["de", "en", "de"] {
            let h = format!("Accept-Language: {lang}\r\n");
            let (ra, rb) = (a.get(&varied, &h).await, b.get(&varied, &h).await);
            assert!(ra.is_hit() && rb.is_hit(), "{ra:?} {rb:?}");
            assert_eq!(ra.body, stored[lang], "{lang}");
            assert_eq!(comparable(&ra), comparable(&rb), "{lang}");
        }
        // A third language is a variant not held: the full path fetches it.
        let r = a.get(&varied, "Accept-Language: fr\r\n").await;
        assert!(!r.is_hit(), "{r:?}");
        let after = fast.stats().await;
        let delta = |k: &str| after[k].as_u64().unwrap() - before[k].as_u64().unwrap();
        assert_eq!(delta("fast_hits"), 3);
        assert_eq!(origin.requests("/gen/langs").await, 5);
    })
    .await
}
