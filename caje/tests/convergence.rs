//! A seeded, time-bounded convergence test (Jepsen-style): three nodes on one shared manifest
//! file, a random workload of reads through random nodes, origin version bumps each followed
//! by a purge (by URL or by tag) through a random node, and kill -9 / SIGTERM restarts with
//! purges while a node is down. Then heal, quiesce, and read every page from every node.
//!
//! Checks:
//! - no read returns a version older than a completed purge: on a node that was up, once the
//!   purge has had `GRACE` to propagate; on a node started after the purge completed, at once
//!   (it must apply what it missed before it serves);
//! - in the quiet phase (no client reads) no page purged since its last client read is listed
//!   in the manifest or fetched from the origin;
//! - after the heal every node serves the latest version of every page;
//! - no read fails on a node that is up.
//!
//! It prints its seed; `CONVERGENCE_SEED=<n>` replays one, `CONVERGENCE_SECS=<n>` lengthens the
//! workload (default 12 s, for CI). `scripts/convergence.sh` runs the longer form over seeds.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use support::{eventually, get, request, within, Caje, CajeConfig, NodeDir, Origin, SITE_HOST};

/// Pages in the workload, and the tag groups they fall in (tag `g<page % GROUPS>`).
const PAGES: usize = 12;
const GROUPS: usize = 3;
/// How long a purge may take to reach the nodes that were up when it was made.
const GRACE: Duration = Duration::from_secs(2);

/// The nodes' TOML; `CONVERGENCE_SOURCE=origin` runs populate from the origin instead of
/// peers.
fn extra() -> String {
    let source = std::env::var("CONVERGENCE_SOURCE").unwrap_or_else(|_| "peer".into());
    format!(
        "[populate]\npoll_ms = 50\nsource = {source:?}\n[manifest]\nflush_interval_ms = 20\n\
         [cluster]\nadvertise_url = \"http://127.0.0.1:{{port}}\"\ntoken = \"convergence\"\n"
    )
}

/// splitmix64: small, seedable, and the same everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn page_path(p: usize) -> String {
    format!(
        "/gen/c{p}?cc=max-age%3D300&bytes=2048&header=Surrogate-Key:g{}",
        p % GROUPS
    )
}

/// One node: its directory and configuration outlive its processes.
struct Node {
    dir: Arc<NodeDir>,
    cfg: CajeConfig,
    caje: Option<Caje>,
    /// When the running process was started (before it printed its address).
    started: Instant,
}

/// A completed purge of one page: reads must not return a version below `version`.
struct PurgeDone {
    page: usize,
    version: u64,
    at: Instant,
}

#[derive(Default)]
struct Findings {
    stale_reads: Vec<String>,
    failed_reads: Vec<String>,
    came_back: Vec<String>,
    fetched_unasked: Vec<String>,
    not_latest: Vec<String>,
}

fn seed() -> u64 {
    std::env::var("CONVERGENCE_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64 % 1_000_000)
        })
}

fn workload_secs() -> u64 {
    std::env::var("CONVERGENCE_SECS")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(12)
}

// Not in the default run: on some seeds (e.g. 3, 616098) it still finds a purge/populate race
// (a purged page fetched again with no client asking; a stack overflow at SIGTERM on seed 3),
// and a test that fails at random would make CI red for everyone. Run it on purpose:
// `cargo nextest run -p caje --test convergence --run-ignored all`, or scripts/convergence.sh.
#[tokio::test]
#[ignore = "finds a known purge/populate race on some seeds (issue 12); run scripts/convergence.sh"]
async fn three_nodes_converge_under_purges_and_restarts() {
    let secs = workload_secs();
    within(secs + 120, run(seed(), secs)).await;
}

async fn run(seed: u64, secs: u64) {
    println!("convergence: seed {seed} (replay with CONVERGENCE_SEED={seed}), {secs} s workload");
    let mut rng = Rng(seed);
    let origin = Origin::start();
    let first = NodeDir::new();
    let db = first.db();
    let mut nodes: Vec<Node> = (0..3)
        .map(|i| {
            let dir = if i == 0 {
                first.clone()
            } else {
                NodeDir::new()
            };
            let cfg = CajeConfig {
                db: Some(db.clone()),
                ..CajeConfig::for_origin(&origin.base(), &extra())
            };
            let started = Instant::now();
            let caje = Caje::start_in(dir.clone(), cfg.clone());
            Node {
                dir,
                cfg,
                caje: Some(caje),
                started,
            }
        })
        .collect();
    let mut purges: Vec<PurgeDone> = Vec::new();
    let mut latest: Vec<Option<u64>> = vec![None; PAGES];
    let mut read_since_purge = [true; PAGES];
    let mut findings = Findings::default();
    let (mut reads, mut bumps, mut kills, mut terms, mut purges_while_down) = (0, 0, 0, 0, 0);
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        let down = nodes.iter().position(|n| n.caje.is_none());
        let roll = rng.below(100);
        if roll < 70 {
            let n = rng.below(3);
            let p = rng.below(PAGES);
            let Some(node) = &nodes[n].caje else { continue };
            reads += 1;
            let start = Instant::now();
            let r = request("GET", &node.url(&page_path(p)), &[("host", SITE_HOST)], b"").await;
            read_since_purge[p] = true;
            if r.status != 200 {
                findings
                    .failed_reads
                    .push(format!("node {n} page {p}: {} {}", r.status, r.text()));
                continue;
            }
            let got = r.origin_version().unwrap_or(0);
            // Purges complete before this read began, that this node must have applied.
            let floor = purges
                .iter()
                .filter(|d| d.page == p)
                .filter(|d| d.at + GRACE <= start || d.at < nodes[n].started)
                .map(|d| d.version)
                .max();
            if let Some(floor) = floor.filter(|&f| got < f) {
                findings.stale_reads.push(format!(
                    "node {n} page {p}: served version {got} after a purge at version {floor} \
                     ({})",
                    r.header("cache-status").unwrap_or("")
                ));
            }
        } else if roll < 90 {
            // A bump, then a purge through a random live node.
            let p = rng.below(PAGES);
            let bumped = bump(&origin, p).await;
            latest[p] = Some(bumped);
            bumps += 1;
            let live: Vec<usize> = (0..3).filter(|&i| nodes[i].caje.is_some()).collect();
            let via = live[rng.below(live.len())];
            let node = nodes[via].caje.as_ref().unwrap();
            let by_tag = rng.below(2) == 0;
            let r = if by_tag {
                node.admin("POST", &format!("/_caje/purge?tag=g{}", p % GROUPS))
                    .await
            } else {
                request(
                    "PURGE",
                    &node.url(&page_path(p)),
                    &[("host", SITE_HOST)],
                    b"",
                )
                .await
            };
            assert_eq!(r.status, 200, "purge through node {via}: {}", r.text());
            if down.is_some() {
                purges_while_down += 1;
            }
            let at = Instant::now();
            let covered: Vec<usize> = if by_tag {
                (0..PAGES).filter(|q| q % GROUPS == p % GROUPS).collect()
            } else {
                vec![p]
            };
            for q in covered {
                read_since_purge[q] = false;
                if let Some(version) = latest[q] {
                    purges.push(PurgeDone {
                        page: q,
                        version,
                        at,
                    });
                }
            }
        } else if let Some(n) = down {
            // Bring the node that is down back.
            restart(&mut nodes[n]);
        } else {
            let n = rng.below(3);
            let mut caje = nodes[n].caje.take().unwrap();
            if rng.below(2) == 0 {
                kills += 1;
                // SAFETY: a plain syscall on our own, not yet reaped, child.
                unsafe { libc::kill(caje.pid(), libc::SIGKILL) };
                caje.wait_exit(Duration::from_secs(10));
                drop(caje);
            } else {
                terms += 1;
                let status = caje.stop();
                assert_eq!(
                    status.code(),
                    Some(0),
                    "SIGTERM exit {status}: {}",
                    caje.stderr()
                        .lines()
                        .rev()
                        .take(10)
                        .collect::<Vec<_>>()
                        .join("\n")
                );
                drop(caje);
                // Half of the SIGTERMs are restarts at once.
                if rng.below(2) == 0 {
                    restart(&mut nodes[n]);
                }
            }
        }
    }

    // Heal and quiesce: every node up, no client reads.
    for node in nodes.iter_mut().filter(|n| n.caje.is_none()) {
        restart(node);
    }
    let before = origin.stats().await;
    tokio::time::sleep(GRACE + Duration::from_secs(2)).await;
    let after = origin.stats().await;
    let count = |stats: &serde_json::Value, p: usize| {
        stats["paths"][format!("/gen/c{p}")]["requests"]
            .as_u64()
            .unwrap_or(0)
    };
    let list = nodes[0].caje.as_ref().unwrap().list().await;
    for p in (0..PAGES).filter(|&p| !read_since_purge[p]) {
        let fetched = count(&after, p) - count(&before, p);
        if fetched > 0 {
            findings.fetched_unasked.push(format!(
                "page {p}: purged, not read since, fetched {fetched} times while quiet"
            ));
        }
        let path = format!("/gen/c{p}?");
        let rows = list["entries"]
            .as_array()
            .map(|e| {
                e.iter()
                    .filter(|r| r["path"].as_str().is_some_and(|s| s.starts_with(&path)))
                    .count()
            })
            .unwrap_or(0);
        if rows > 0 {
            findings.came_back.push(format!(
                "page {p}: purged, not read since, yet listed in the manifest"
            ));
        }
    }
    let quiet_total = after["total"].as_u64().unwrap_or(0) - before["total"].as_u64().unwrap_or(0);

    // Every page from every node: the latest version everywhere.
    for (p, latest) in latest.iter().enumerate() {
        let mut seen = Vec::new();
        for (n, node) in nodes.iter().enumerate() {
            let node = node.caje.as_ref().unwrap();
            let r = get(&node.url(&page_path(p)), &[("host", SITE_HOST)]).await;
            if r.status != 200 {
                findings
                    .failed_reads
                    .push(format!("final read node {n} page {p}: {}", r.status));
                continue;
            }
            seen.push(r.origin_version().unwrap_or(0));
        }
        let want = latest.unwrap_or_else(|| seen.iter().copied().max().unwrap_or(0));
        if seen.iter().any(|&v| v != want) {
            findings
                .not_latest
                .push(format!("page {p}: nodes served {seen:?}, latest is {want}"));
        }
    }
    let mut peer_fills = 0;
    for node in &nodes {
        peer_fills += node.caje.as_ref().unwrap().stat("peer_fills").await;
    }
    println!(
        "convergence: seed {seed}: {reads} reads, {bumps} bump+purge ({purges_while_down} while a \
         node was down), {kills} kill -9, {terms} SIGTERM; origin {} requests ({quiet_total} while \
         quiet); {peer_fills} peer fills",
        origin.total().await
    );
    let problems: BTreeMap<&str, &Vec<String>> = [
        ("stale reads", &findings.stale_reads),
        ("failed reads", &findings.failed_reads),
        ("purged pages back in the manifest", &findings.came_back),
        (
            "purged pages fetched without a client",
            &findings.fetched_unasked,
        ),
        ("not on the latest version", &findings.not_latest),
    ]
    .into_iter()
    .filter(|(_, v)| !v.is_empty())
    .collect();
    if !problems.is_empty() {
        let mut logs = String::new();
        for (i, node) in nodes.iter().enumerate() {
            let stderr = node.caje.as_ref().unwrap().stderr();
            let tail: Vec<&str> = stderr.lines().rev().take(15).collect();
            logs.push_str(&format!(
                "--- node {i} stderr (last lines, newest first)\n{}\n",
                tail.join("\n")
            ));
        }
        panic!("convergence: seed {seed} (replay with CONVERGENCE_SEED={seed}) failed: {problems:#?}\n{logs}");
    }
    // Quiet means quiet: wait for the nodes to settle before the temp dirs go.
    eventually(5, "nodes still answer", || async {
        nodes[0].caje.as_ref().unwrap().stats().await.is_object()
    })
    .await;
}

fn restart(node: &mut Node) {
    node.started = Instant::now();
    node.caje = Some(Caje::start_in(node.dir.clone(), node.cfg.clone()));
}

async fn bump(origin: &Origin, p: usize) -> u64 {
    let r = support::post(&origin.url(&format!("/_origin/bump?path=/gen/c{p}")), &[]).await;
    assert_eq!(r.status, 200, "bump: {}", r.text());
    r.json()["version"]
        .as_u64()
        .expect("bump answers its version")
}
