//! `cache.max_disk_bytes`: the cap holds under many fills (files are really deleted, evictions
//! counted), eviction racing hits and fills never serves a torn body, and a slow client of a
//! fill whose body is evicted before it has read it still gets all of it.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

use support::{assert_same_body, eventually, gen, get, within, Caje, Origin};

/// Entry files, and the bytes they occupy on disk as the file system reports it
/// (`st_blocks`, what `du` counts): the cap counts the same.
fn files_on_disk(dir: &Path) -> (usize, u64) {
    use std::os::unix::fs::MetadataExt;
    let (mut entries, mut bytes) = (0, 0);
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for f in rd.flatten() {
            let p = f.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            if p.to_string_lossy().ends_with(".entry") {
                entries += 1;
                bytes += f.metadata().map_or(0, |m| m.blocks() * 512);
            }
        }
    }
    (entries, bytes)
}

#[tokio::test]
async fn cap_holds_under_many_fills() {
    within(60, async {
        let origin = Origin::start();
        // 1 MiB; each page takes 6 blocks (20,000 bytes and a header of several hundred
        // bytes) = 24 KiB, so ~42 fit of 100.
        let caje = Caje::start(
            &origin,
            "[cache]\nmax_disk_bytes = 1048576\nmemory_bytes = 0\n",
        );
        for i in 0..100 {
            let r = caje
                .get(&gen(&format!("p{i}"), "cc=max-age%3D600&bytes=20000"))
                .await;
            assert_eq!(r.status, 200);
            assert_eq!(r.body.len(), 20_000);
        }
        eventually(10, "100 fills committed", || async {
            caje.stat("stored").await == 100
        })
        .await;
        eventually(10, "evictions settled", || async {
            let s = caje.stats().await;
            s["entries"].as_u64().unwrap() + s["evictions"].as_u64().unwrap() == 100
        })
        .await;
        let stats = caje.stats().await;
        let cap = stats["max_disk_bytes"].as_u64().unwrap();
        assert_eq!(cap, 1_048_576);
        assert!(stats["disk_bytes"].as_u64().unwrap() <= cap, "{stats}");
        let entries = stats["entries"].as_u64().unwrap();
        assert!(stats["evictions"].as_u64().unwrap() >= 50, "{stats}");
        assert!(entries >= 30, "the cache still holds what fits: {stats}");
        // The files really left the disk (the counter moves only after the unlink).
        let (files, bytes) = files_on_disk(&caje.cache_dir());
        assert_eq!(files as u64, entries, "one file per entry left on disk");
        assert!(bytes <= cap, "{bytes} bytes on disk over the {cap} cap");
        // What the cap counts is what the file system allocated.
        assert_eq!(stats["disk_bytes"].as_u64().unwrap(), bytes, "{stats}");
        let status = caje.admin("GET", "/_caje/status").await;
        let status: serde_json::Value = serde_json::from_slice(&status.body).unwrap();
        assert_eq!(status["cache"]["evictions"], stats["evictions"], "{status}");
        // A page asked for again after eviction is fetched again, whole.
        let r = caje.get(&gen("p0", "cc=max-age%3D600&bytes=20000")).await;
        assert_eq!(r.body.len(), 20_000);
    })
    .await
}

#[tokio::test]
async fn eviction_racing_hits_and_fills_never_tears_a_body() {
    within(90, async {
        let origin = Origin::start();
        // 512 KiB; 50,000-byte pages take 13 blocks (52 KiB): about 9 fit of the 30 in play,
        // and the memory tier is off, so every hit reads a file eviction may be deleting.
        let caje = Caje::start(
            &origin,
            "[cache]\nmax_disk_bytes = 524288\nmemory_bytes = 0\n",
        );
        let paths: Vec<String> = (0..30)
            .map(|i| gen(&format!("r{i}"), "cc=max-age%3D600&bytes=50000"))
            .collect();
        let mut want = Vec::new();
        for p in &paths {
            want.push(get(&origin.url(p), &[]).await.body);
        }
        let want = std::sync::Arc::new(want);
        let paths = std::sync::Arc::new(paths);
        let until = Instant::now() + Duration::from_secs(4);
        let mut tasks = Vec::new();
        for t in 0..6u64 {
            let (url, paths, want) = (caje.url(""), paths.clone(), want.clone());
            tasks.push(tokio::spawn(async move {
                let mut seed = t.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                let (mut hits, mut total) = (0u64, 0u64);
                while Instant::now() < until {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    // Skewed: a third of the requests go to the first five pages.
                    let i = if seed % 3 == 0 {
                        seed / 3 % 5
                    } else {
                        seed / 3 % 30
                    } as usize;
                    let r = get(&format!("{}{}", url.trim_end_matches('/'), paths[i]), &[]).await;
                    assert_eq!(r.status, 200, "{}", paths[i]);
                    assert!(
                        r.body == want[i],
                        "{}: torn or wrong body ({} bytes)",
                        paths[i],
                        r.body.len()
                    );
                    total += 1;
                    hits += u64::from(r.cache_status().is_hit());
                }
                (hits, total)
            }));
        }
        let (mut hits, mut total) = (0, 0);
        for t in tasks {
            let (h, n) = t.await.unwrap();
            hits += h;
            total += n;
        }
        let stats = caje.stats().await;
        assert!(
            hits >= 20,
            "too few hits ({hits} of {total}) to exercise the race: {stats}"
        );
        assert!(stats["evictions"].as_u64().unwrap() >= 20, "{stats}");
        assert!(stats["disk_bytes"].as_u64().unwrap() <= 524_288, "{stats}");
    })
    .await
}

/// A client of a large fill reads nothing until the fill has committed and its body has been
/// evicted (its files unlinked); then it reads everything. The spool serves what left its
/// memory window through the fill writer's own descriptor, never by reopening a path, so the
/// client gets the whole body.
#[tokio::test]
async fn a_slow_client_of_a_fill_gets_the_whole_body_after_its_eviction() {
    within(90, async {
        let origin = Origin::start();
        // 12 MiB cap, memory tier off: two 8 MiB pages do not fit, so the second evicts the
        // first (new pages wait in S3-FIFO's small queue and leave first).
        let caje = Caje::start(
            &origin,
            "[cache]\nmax_disk_bytes = 12582912\nmemory_bytes = 0\n",
        );
        const BODY: usize = 8 << 20;
        let big = gen("evicted-big", &format!("cc=max-age%3D600&bytes={BODY}"));
        let want = get(&origin.url(&big), &[]).await.body;
        assert_eq!(want.len(), BODY);

        // A tiny receive window: the client holds a few KiB; the rest waits in the spool
        // (1 MiB in memory, the rest in the fill's file).
        let socket = TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        let mut slow = socket.connect(caje.addr()).await.expect("connect");
        let req = format!("GET {big} HTTP/1.1\r\nHost: {}\r\n\r\n", caje.addr());
        slow.write_all(req.as_bytes()).await.expect("send");

        eventually(30, "the big fill committed", || async {
            caje.stat("stored").await == 1
        })
        .await;
        let other = gen("evicted-other", &format!("cc=max-age%3D600&bytes={BODY}"));
        let r = caje.get(&other).await;
        assert_eq!(r.status, 200);
        eventually(10, "the first page evicted and unlinked", || async {
            caje.stat("evictions").await >= 1
        })
        .await;
        let (files, _) = files_on_disk(&caje.cache_dir());
        assert_eq!(files, 1, "only the second page is left on disk");

        // Now read it all.
        let mut got = Vec::with_capacity(BODY + 1024);
        let mut buf = vec![0u8; 256 * 1024];
        let mut need = usize::MAX;
        while got.len() < need {
            let n = slow.read(&mut buf).await.expect("read");
            assert!(
                n > 0,
                "caje closed the connection after {} bytes",
                got.len()
            );
            got.extend_from_slice(&buf[..n]);
            if need == usize::MAX {
                if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
                    assert!(head.starts_with("http/1.1 200"), "{head}");
                    let len = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map(|v| v.trim().parse::<usize>().expect("content-length"))
                        .expect("a fill of a known length is sent with content-length");
                    need = end + 4 + len;
                    got.drain(..end + 4);
                    need -= end + 4;
                }
            }
        }
        assert_same_body(&got, &want, "the slow client's body");
    })
    .await
}
