//! A damaged entry file (its header or its body) is detected: the request becomes a miss that
//! fetches a good copy, the damaged bytes are never served, and `corrupt_entries` counts it.
//!
//! Headers are damaged while caje is stopped (a running caje may serve an entry's metadata
//! from memory, which is not wrong: the damaged bytes are not served); bodies both while it
//! runs and while it is stopped.

mod support;

use std::collections::BTreeSet;
use std::path::PathBuf;

use support::{files_under, flip_middle_bytes, gen, within, Caje, Origin};

/// Fetches `path` (a stored miss) and returns the files it added under the cache dir.
/// These tests are about the disk tier's checks: with the memory tier on, the hit in
/// [`store`] would keep a verified copy in RAM that answers instead of the corrupted file.
/// Edge warming is off: after a restart, the damaged copy may be found and dropped before
/// the request comes (the start-up scan, or the check that follows a start from the index
/// snapshot), and warming would then fetch the page the manifest lists, so the request would
/// be a hit on a good copy instead of the miss these tests look for.
const DISK_ONLY: &str = "[cache]\nmemory_bytes = 0\n[populate]\nenabled = false\n";

async fn store(caje: &Caje, path: &str) -> (support::Resp, Vec<PathBuf>) {
    let before: BTreeSet<PathBuf> = files_under(&caje.cache_dir()).into_iter().collect();
    let r = caje.get_site(path).await;
    r.cache_status().assert_fwd("uri-miss", 200, true);
    caje.settle(path).await;
    let hit = caje.get_site(path).await;
    hit.cache_status().assert_hit();
    let added = files_under(&caje.cache_dir())
        .into_iter()
        .filter(|p| !before.contains(p))
        .collect();
    (r, added)
}

fn one_with_suffix(files: &[PathBuf], suffix: &str) -> PathBuf {
    let matching: Vec<_> = files
        .iter()
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    assert_eq!(
        matching.len(),
        1,
        "expected exactly one new `*{suffix}` file for the entry, new files: {files:?}"
    );
    matching[0].clone()
}

/// Where to damage an entry file.
#[derive(Debug, Clone, Copy)]
enum Damage {
    /// Bytes inside the header (its metadata).
    Header,
    /// Bytes in the middle of the file: the body (20,000 bytes behind a header of hundreds).
    Body,
}

/// XORs 16 bytes of the file at `at` with 0x5A (same length, different content).
fn flip_bytes_at(path: &std::path::Path, at: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    for b in &mut bytes[at..at + 16] {
        *b ^= 0x5A;
    }
    std::fs::write(path, bytes).unwrap();
}

async fn assert_recovers_from(
    origin: &Origin,
    caje: Caje,
    name: &str,
    damage: Damage,
    restart: bool,
) {
    let path = gen(name, "cc=max-age%3D300&bytes=20000");
    let (good, files) = store(&caje, &path).await;
    let victim = one_with_suffix(&files, ".entry");
    let spoil = |p: &std::path::Path| match damage {
        Damage::Header => flip_bytes_at(p, 40),
        Damage::Body => flip_middle_bytes(p, 16),
    };
    let mut corrupt_before = caje.stat("corrupt_entries").await;

    let caje = if restart {
        let mut caje = caje;
        let st = caje.stop();
        assert_eq!(st.code(), Some(0), "exit on SIGTERM: {st}");
        spoil(&victim);
        corrupt_before = 0; // a new process counts from zero
        Caje::start_in(caje.dir.clone(), caje.cfg.clone())
    } else {
        spoil(&victim);
        caje
    };

    let r = caje.get_site(&path).await;
    assert_eq!(r.status, 200, "{}", r.text());
    support::assert_same_body(
        &r.body,
        &good.body,
        "served bytes differ from the origin's body",
    );
    let cs = r.cache_status();
    assert!(
        !cs.is_hit(),
        "a corrupt {damage:?} was served as a hit: `{}`",
        cs.raw
    );
    assert_eq!(
        origin.requests(&format!("/gen/{name}")).await,
        2,
        "a corrupt entry must be refetched from the origin"
    );
    let corrupt_after = caje.stat("corrupt_entries").await;
    assert!(
        corrupt_after > corrupt_before,
        "corrupt_entries did not increase ({corrupt_before} -> {corrupt_after})"
    );

    // The refetched copy is good again.
    let hit = caje.get_site(&path).await;
    if hit.cache_status().is_hit() {
        support::assert_same_body(&hit.body, &good.body, "body");
    }
}

#[tokio::test]
async fn corrupt_header_is_a_miss() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, DISK_ONLY);
        assert_recovers_from(&origin, caje, "m", Damage::Header, true).await;
    })
    .await
}

#[tokio::test]
async fn corrupt_body_is_a_miss() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, DISK_ONLY);
        assert_recovers_from(&origin, caje, "b", Damage::Body, false).await;
    })
    .await
}

#[tokio::test]
async fn corrupt_body_found_after_restart_is_a_miss() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, DISK_ONLY);
        assert_recovers_from(&origin, caje, "br", Damage::Body, true).await;
    })
    .await
}

/// A truncated entry file (e.g. a crash mid-write: nothing is fsynced) is also corrupt, never
/// a short hit.
#[tokio::test]
async fn truncated_entry_file_is_a_miss() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, DISK_ONLY);
        let path = gen("t", "cc=max-age%3D300&bytes=20000");
        let (good, files) = store(&caje, &path).await;
        let victim = one_with_suffix(&files, ".entry");
        let len = std::fs::metadata(&victim).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&victim)
            .unwrap()
            .set_len(len / 2)
            .unwrap();

        let r = support::http::try_request(
            "GET",
            &caje.url(&path),
            &[("Host", support::SITE_HOST)],
            b"",
        )
        .await;
        match r {
            Ok(r) => {
                assert_eq!(r.status, 200);
                support::assert_same_body(&r.body, &good.body, "a truncated body was served");
            }
            Err(e) => panic!("request after truncating the body file failed: {e}"),
        }
        assert_eq!(origin.requests("/gen/t").await, 2);
    })
    .await
}
