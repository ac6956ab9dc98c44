//! Request paths cannot steer where caje writes: after `..` segments, encoded dots and
//! slashes, NUL bytes and very long paths, every file caje created is inside its cache dir
//! (or is the manifest), and the cache file names are fixed-length hex.

mod support;

use std::path::Path;

use support::http::try_request;
use support::{dirs_under, files_under, within, Caje, Origin};

fn hostile_paths() -> Vec<String> {
    let cc = "cc=max-age%3D60";
    let long = "a".repeat(4000);
    vec![
        format!("/../../etc/passwd?{cc}"),
        format!("/gen/../../../../../passwd?{cc}"),
        format!("/gen/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/x?{cc}"),
        format!("/%2e%2e/%2e%2e/x?{cc}"),
        format!("/gen/..%2f..%2f..%2f..%2f..%2fescaped?{cc}"),
        format!("/gen/..%5c..%5c..%5c..%5c..%5cbackslash?{cc}"),
        format!("/gen/a%00b?{cc}"),
        format!("/gen/%00?{cc}"),
        format!("/gen/{long}?{cc}"),
        format!("/gen/{}?{cc}", "../".repeat(40)),
        format!("/gen/x?{cc}&p=../../../../query"),
        format!("/gen/%2fabsolute?{cc}"),
    ]
}

fn is_lower_hex(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[tokio::test]
async fn hostile_paths_stay_inside_cache_dir() {
    within(60, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "");

        // A normal entry first, so the layout check below has something to look at.
        let normal = caje.get("/gen/normal?cc=max-age%3D60").await;
        normal.cache_status().assert_fwd("uri-miss", 200, true);
        caje.settle("/gen/normal").await;

        for path in hostile_paths() {
            // Any status is fine (400, 404, 200...); crashing or hanging is not.
            if let Err(e) = try_request("GET", &caje.url(&path), &[], b"").await {
                panic!("GET {:.80} failed at the transport level: {e}", path);
            }
            // Twice, so a stored entry is also read back.
            let _ = try_request("GET", &caje.url(&path), &[], b"").await;
        }
        // Hostile Host headers too (the host is part of the cache key).
        for host in ["..", "../../x", "a/../../b", "%2e%2e"] {
            let _ = try_request(
                "GET",
                &caje.url("/gen/h?cc=max-age%3D60"),
                &[("Host", host)],
                b"",
            )
            .await;
        }
        let still = caje.get("/gen/normal?cc=max-age%3D60").await;
        assert_eq!(still.status, 200, "caje unhealthy after hostile paths");

        let dir = &caje.dir;
        let cache_dir = dir.cache_dir();
        let outside: Vec<_> = files_under(dir.root())
            .into_iter()
            .filter(|p| !p.starts_with(&cache_dir) && !dir.is_db_file(p) && !dir.is_harness_file(p))
            .collect();
        assert!(
            outside.is_empty(),
            "caje created files outside its cache dir: {outside:?}"
        );
        for d in [dir.root().join("d1"), dir.root().join("d1/d2/d3")] {
            let unexpected: Vec<_> = std::fs::read_dir(&d)
                .unwrap()
                .flatten()
                .map(|e| e.path())
                .filter(|p| !cache_dir.starts_with(p))
                .collect();
            assert!(
                unexpected.is_empty(),
                "unexpected entries in {}: {unexpected:?}",
                d.display()
            );
        }

        let files = files_under(&cache_dir);
        assert!(
            !files.is_empty(),
            "nothing was stored under {}",
            cache_dir.display()
        );
        // Every name under the cache dir is tame; entry files are named by a fixed-length hash.
        let mut stem_len = None;
        for f in &files {
            let rel = f.strip_prefix(&cache_dir).unwrap();
            for comp in rel.components() {
                let comp = comp.as_os_str().to_string_lossy();
                assert!(
                    comp.len() <= 100
                        && comp != "."
                        && comp != ".."
                        && comp
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)),
                    "unexpected name {comp:?} in {}",
                    f.display()
                );
            }
            let name = f.file_name().unwrap().to_string_lossy().into_owned();
            if !name.ends_with(".entry") {
                continue;
            }
            let stem = name.split('.').next().unwrap();
            assert!(
                is_lower_hex(stem),
                "entry file name is not hex: {}",
                f.display()
            );
            assert!(
                stem.len() >= 32,
                "entry file name is too short to be a hash: {}",
                f.display()
            );
            match stem_len {
                None => stem_len = Some(stem.len()),
                Some(l) => assert_eq!(l, stem.len(), "entry names differ in length: {files:?}"),
            }
        }
        assert!(
            stem_len.is_some(),
            "no .entry files under {}: {files:?}",
            cache_dir.display()
        );
        // Nothing anywhere in the node dir is named after the request.
        for p in files_under(dir.root())
            .iter()
            .chain(dirs_under(dir.root()).iter())
        {
            let name = p.to_string_lossy();
            for marker in [
                "passwd",
                "escaped",
                "backslash",
                "absolute",
                "query",
                "aaaaaaaa",
            ] {
                assert!(
                    !name.contains(marker),
                    "a file is named after the request path: {name}"
                );
            }
        }
        assert!(
            !Path::new(&dir.cwd()).read_dir().unwrap().any(|_| true),
            "caje wrote into its working directory"
        );
    })
    .await
}
