//! The convergence workload (Jepsen-style), shared by `convergence.rs` (nodes on one local
//! manifest file) and `convergence_litefs.rs` (nodes on a real LiteFS cluster's mounts).
//!
//! Included with `#[path = "support/convergence.rs"] mod convergence;` next to `mod support;`.
//!
//! A seeded, time-bounded run over N caje nodes in front of one origin: random reads through
//! random nodes, origin version bumps each followed by a purge (by URL or by tag) through a
//! random live node, and kill -9 / SIGTERM restarts with purges while a node is down. Then
//! heal, quiesce, and read every page from every node.
//!
//! Checks:
//! - no read returns a version older than a completed purge: on a node that was up, once the
//!   purge has had `grace` to propagate; on a node started after the purge completed, at once
//!   (it must apply what it missed before it serves);
//! - in the quiet phase (no client reads, from the moment every node has applied every purge)
//!   no page purged since its last client read is listed in the manifest or fetched from the
//!   origin;
//! - after the heal every node serves the latest version of every page;
//! - no read fails on a node that is up.
//!
//! The seed fixes the sequence of operations (which node, which page, which kind of purge or
//! stop), not the timing of the nodes' background work: a replay reruns the same schedule.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::support::http::Resp;
use crate::support::{get, request, Caje, CajeConfig, NodeDir, Origin, SITE_HOST};

/// Pages in the workload, and the tag groups they fall in (tag `g<page % GROUPS>`).
pub const PAGES: usize = 12;
pub const GROUPS: usize = 3;

/// The nodes' TOML (`manifest` is more of the `[manifest]` table, e.g. `litefs = "auto"`);
/// `CONVERGENCE_SOURCE=origin` runs populate from the origin instead of peers.
pub fn node_toml(manifest: &str) -> String {
    let source = std::env::var("CONVERGENCE_SOURCE").unwrap_or_else(|_| "peer".into());
    format!(
        "[populate]\npoll_ms = 50\nsource = {source:?}\n[manifest]\nflush_interval_ms = 20\n\
         {manifest}\n[cluster]\nadvertise_url = \"http://127.0.0.1:{{port}}\"\n\
         token = \"convergence\"\n"
    )
}

/// The seed: `CONVERGENCE_SEED`, or one from the clock (printed, so it can be replayed).
pub fn seed() -> u64 {
    std::env::var("CONVERGENCE_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64 % 1_000_000)
        })
}

/// Seconds of workload: `CONVERGENCE_SECS`, or `default`.
pub fn workload_secs(default: u64) -> u64 {
    std::env::var("CONVERGENCE_SECS")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(default)
}

/// `fut` (a request), or `None` after `limit` ([`Options::request_limit`]): a node that hangs
/// is a finding (a failed read) or stops the run with what it knows, never a hung test.
async fn bounded(limit: Duration, fut: impl std::future::Future<Output = Resp>) -> Option<Resp> {
    tokio::time::timeout(limit, fut).await.ok()
}

/// A node's `/_caje/status`, if it answered 200 within `limit`.
async fn status_json(caje: &Caje, limit: Duration) -> Option<serde_json::Value> {
    bounded(limit, caje.admin("GET", "/_caje/status"))
        .await
        .filter(|r| r.status == 200)
        .map(|r| r.json())
}

/// The last operations of a run, with their times, for a failure report.
struct Trace {
    began: Instant,
    ops: std::collections::VecDeque<String>,
}

impl Trace {
    fn new() -> Trace {
        Trace {
            began: Instant::now(),
            ops: std::collections::VecDeque::new(),
        }
    }

    fn op(&mut self, what: String) {
        if self.ops.len() == 40 {
            self.ops.pop_front();
        }
        let at = self.began.elapsed().as_secs_f64();
        if std::env::var_os("CONVERGENCE_TRACE").is_some() {
            eprintln!("convergence {at:8.3}s {what}");
        }
        self.ops.push_back(format!("{at:8.3}s {what}"));
    }

    fn last(&self) -> String {
        let ops: Vec<&str> = self.ops.iter().map(String::as_str).collect();
        format!("last operations:\n  {}\n", ops.join("\n  "))
    }
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

pub fn page_path(p: usize) -> String {
    format!(
        "/gen/c{p}?cc=max-age%3D300&bytes=2048&header=Surrogate-Key:g{}",
        p % GROUPS
    )
}

/// One node to run: its directory and configuration outlive its processes.
pub struct NodeSpec {
    pub dir: Arc<NodeDir>,
    pub cfg: CajeConfig,
    /// Where it runs, for the failure report (e.g. `n2 (replica)`). Nodes start in the order
    /// given, before the workload.
    pub name: String,
}

/// How to run the workload.
pub struct Options {
    pub seed: u64,
    pub secs: u64,
    /// How long a purge may take to reach the nodes that were up when it was made.
    pub grace: Duration,
    /// How long the quiet phase lasts (no client reads) before its checks.
    pub quiet: Duration,
    /// How long one request to a node may take before the run counts it as failed (a read)
    /// or stops (a purge, an admin request).
    pub request_limit: Duration,
    /// Printed before each line, e.g. `convergence` or `convergence-litefs`.
    pub label: &'static str,
}

/// One node while the workload runs.
struct Node {
    spec: NodeSpec,
    caje: Option<Caje>,
    /// When the running process was started (before it printed its address).
    started: Instant,
}

impl Node {
    fn start(&mut self) {
        self.started = Instant::now();
        let (dir, cfg) = (self.spec.dir.clone(), self.spec.cfg.clone());
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Caje::start_in(dir, cfg))) {
            Ok(caje) => self.caje = Some(caje),
            Err(panic) => {
                // A node that cannot start is a finding: keep its directory (every process's
                // stderr) for inspection, like any other failure.
                eprintln!(
                    "node in {} did not start; directory kept",
                    self.spec.dir.root().display()
                );
                std::mem::forget(self.spec.dir.clone());
                std::panic::resume_unwind(panic);
            }
        }
    }
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

/// What a run did, for the caller's own checks and figures.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub reads: usize,
    pub bumps: usize,
    pub purges_while_down: usize,
    pub kills: usize,
    pub terms: usize,
    pub origin_requests: u64,
    pub quiet_requests: u64,
    pub peer_fills: u64,
    /// The longest a purge request took.
    pub slowest_purge: Duration,
    /// Purges answered `202` (queued: the manifest was not writable within the node's
    /// `purge_wait_ms`); checked only once they land, at the heal.
    pub queued_purges: usize,
    /// From the heal to every node having applied the last purge.
    pub applied_after: Duration,
    /// Each node's manifest role at the end (`/_caje/status`), and the HALTs its last
    /// process took.
    pub roles: Vec<(String, u64)>,
    pub took: Duration,
}

/// Runs the workload over `specs` (already configured for `origin`), checks it, and stops
/// every node before it returns. Panics with the seed and the findings on a failed check.
pub async fn run(origin: &Origin, specs: Vec<NodeSpec>, opts: &Options) -> Report {
    let Options {
        seed,
        secs,
        grace,
        quiet,
        request_limit,
        label,
    } = *opts;
    println!("{label}: seed {seed} (replay with CONVERGENCE_SEED={seed}), {secs} s workload");
    let began = Instant::now();
    let mut rng = Rng(seed);
    let mut nodes: Vec<Node> = specs
        .into_iter()
        .map(|spec| Node {
            spec,
            caje: None,
            started: Instant::now(),
        })
        .collect();
    for node in &mut nodes {
        node.start();
    }
    let count = nodes.len();
    let mut purges: Vec<PurgeDone> = Vec::new();
    let mut latest: Vec<Option<u64>> = vec![None; PAGES];
    let mut read_since_purge = [true; PAGES];
    let mut findings = Findings::default();
    let mut report = Report::default();
    // The id of the newest purge's tombstone.
    let mut last_tombstone = 0;
    let mut trace = Trace::new();
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        let down = nodes.iter().position(|n| n.caje.is_none());
        let roll = rng.below(100);
        if roll < 70 {
            let n = rng.below(count);
            let p = rng.below(PAGES);
            let Some(node) = &nodes[n].caje else { continue };
            report.reads += 1;
            let start = Instant::now();
            trace.op(format!("read page {p} on node {n}"));
            let r = bounded(
                request_limit,
                request("GET", &node.url(&page_path(p)), &[("host", SITE_HOST)], b""),
            )
            .await;
            read_since_purge[p] = true;
            let Some(r) = r else {
                findings.failed_reads.push(format!(
                    "node {n} page {p}: no answer within {request_limit:?}"
                ));
                continue;
            };
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
                .filter(|d| d.at + grace <= start || d.at < nodes[n].started)
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
            let bumped = bump(origin, p).await;
            latest[p] = Some(bumped);
            report.bumps += 1;
            let live: Vec<usize> = (0..count).filter(|&i| nodes[i].caje.is_some()).collect();
            let via = live[rng.below(live.len())];
            let node = nodes[via].caje.as_ref().unwrap();
            let by_tag = rng.below(2) == 0;
            trace.op(format!(
                "bump page {p} to {bumped}, purge {} through node {via}",
                if by_tag {
                    format!("tag g{}", p % GROUPS)
                } else {
                    "its URL".into()
                }
            ));
            let purge_began = Instant::now();
            let r = if by_tag {
                bounded(
                    request_limit,
                    node.admin("POST", &format!("/_caje/purge?tag=g{}", p % GROUPS)),
                )
                .await
            } else {
                bounded(
                    request_limit,
                    request(
                        "PURGE",
                        &node.url(&page_path(p)),
                        &[("host", SITE_HOST)],
                        b"",
                    ),
                )
                .await
            };
            report.slowest_purge = report.slowest_purge.max(purge_began.elapsed());
            // 202: the manifest could not be written within `purge_wait_ms` (a HALT left on
            // the primary by a node killed while acquiring it); the purge is queued on that
            // node and is not complete for the other nodes until it lands.
            let Some(r) = r.filter(|r| r.status == 200 || r.status == 202) else {
                panic!(
                    "{label}: seed {seed}: a purge through node {via} failed or took over \
                     {request_limit:?}\n{}{}",
                    trace.last(),
                    keep_dirs(&nodes)
                );
            };
            let queued = r.status == 202;
            if queued {
                report.queued_purges += 1;
            }
            last_tombstone = last_tombstone.max(r.json()["tombstone"].as_i64().unwrap_or(0));
            if down.is_some() {
                report.purges_while_down += 1;
            }
            let at = Instant::now();
            let covered: Vec<usize> = if by_tag {
                (0..PAGES).filter(|q| q % GROUPS == p % GROUPS).collect()
            } else {
                vec![p]
            };
            for q in covered {
                read_since_purge[q] = false;
                if queued {
                    continue;
                }
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
            trace.op(format!("start node {n}"));
            nodes[n].start();
        } else {
            let n = rng.below(count);
            let mut caje = nodes[n].caje.take().unwrap();
            if rng.below(2) == 0 {
                trace.op(format!("kill -9 node {n}"));
                report.kills += 1;
                // SAFETY: a plain syscall on our own, not yet reaped, child.
                unsafe { libc::kill(caje.pid(), libc::SIGKILL) };
                caje.wait_exit(Duration::from_secs(10));
                drop(caje);
            } else {
                report.terms += 1;
                trace.op(format!("SIGTERM node {n}"));
                let status = caje.stop();
                if status.code() != Some(0) {
                    panic!(
                        "{label}: seed {seed}: node {n}: SIGTERM exit {status}: {}\n{}{}",
                        caje.stderr()
                            .lines()
                            .rev()
                            .take(10)
                            .collect::<Vec<_>>()
                            .join("\n"),
                        trace.last(),
                        keep_dirs(&nodes)
                    );
                }
                drop(caje);
                // Half of the SIGTERMs are restarts at once.
                if rng.below(2) == 0 {
                    trace.op(format!("start node {n}"));
                    nodes[n].start();
                }
            }
        }
    }

    // Heal and quiesce: every node up, no client reads.
    for (i, node) in nodes.iter_mut().enumerate() {
        if node.caje.is_none() {
            trace.op(format!("start node {i} (heal)"));
            node.start();
        }
    }
    // Quiet starts once every node has applied every purge. Until a node has, a populate
    // fetch it started from a listing older than a purge is a fill concurrent with that
    // purge, which may reach the origin (its copy is dropped at its commit); from then on,
    // nothing may fetch a purged page without a client asking.
    let applied = Instant::now();
    // Queued purges land first: every node's manifest queue empty, then the last tombstone
    // id is whatever the manifest holds (a queued purge's id was not in its answer).
    for (i, node) in nodes.iter().enumerate() {
        let caje = node.caje.as_ref().unwrap();
        loop {
            let status = status_json(caje, request_limit).await;
            let pending = status
                .as_ref()
                .and_then(|s| s["manifest"]["queue"]["pending"].as_u64());
            if pending == Some(0) {
                if let Some(ids) = status.as_ref().and_then(|s| s["recent_purges"].as_array()) {
                    let newest = ids.iter().filter_map(|p| p["id"].as_i64()).max();
                    last_tombstone = last_tombstone.max(newest.unwrap_or(0));
                }
                break;
            }
            if applied.elapsed() > Duration::from_secs(60) {
                panic!(
                    "{label}: seed {seed}: node {i} still had manifest writes queued 60 s \
                     after the heal (status: {status:?})\n{}{}",
                    trace.last(),
                    keep_dirs(&nodes)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    for (i, node) in nodes.iter().enumerate() {
        let caje = node.caje.as_ref().unwrap();
        loop {
            let status = status_json(caje, request_limit).await;
            let cursor = status
                .as_ref()
                .and_then(|s| s["tombstones"]["cursor"].as_i64());
            if cursor.is_some_and(|c| c >= last_tombstone) {
                break;
            }
            if applied.elapsed() > Duration::from_secs(15) {
                panic!(
                    "{label}: seed {seed}: node {i} did not apply tombstone {last_tombstone} \
                     within 15 s of the heal (status: {status:?})\n{}{}",
                    trace.last(),
                    keep_dirs(&nodes)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    report.applied_after = applied.elapsed();
    trace.op(format!(
        "every node applied tombstone {last_tombstone}: quiet for {quiet:?}"
    ));
    let before = origin.stats().await;
    tokio::time::sleep(quiet).await;
    let after = origin.stats().await;
    let fetches = |stats: &serde_json::Value, p: usize| {
        stats["paths"][format!("/gen/c{p}")]["requests"]
            .as_u64()
            .unwrap_or(0)
    };
    let list = tokio::time::timeout(request_limit, nodes[0].caje.as_ref().unwrap().list())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{label}: seed {seed}: node 0 did not list its manifest within \
                 {request_limit:?}\n{}{}",
                trace.last(),
                keep_dirs(&nodes)
            )
        });
    for p in (0..PAGES).filter(|&p| !read_since_purge[p]) {
        let fetched = fetches(&after, p) - fetches(&before, p);
        if fetched > 0 {
            findings.fetched_unasked.push(format!(
                "page {p}: purged, not read since, fetched {fetched} times while quiet"
            ));
        }
        let path = format!("/gen/c{p}?");
        let rows: Vec<String> = list["entries"]
            .as_array()
            .map(|e| {
                e.iter()
                    .filter(|r| r["path"].as_str().is_some_and(|s| s.starts_with(&path)))
                    .map(|r| format!("stored_at {} by {}", r["stored_at"], r["node"]))
                    .collect()
            })
            .unwrap_or_default();
        if !rows.is_empty() {
            findings.came_back.push(format!(
                "page {p}: purged, not read since, yet listed in the manifest: {rows:?}"
            ));
        }
    }
    report.quiet_requests =
        after["total"].as_u64().unwrap_or(0) - before["total"].as_u64().unwrap_or(0);

    // Every page from every node: the latest version everywhere.
    for (p, latest) in latest.iter().enumerate() {
        let mut seen = Vec::new();
        for (n, node) in nodes.iter().enumerate() {
            let node = node.caje.as_ref().unwrap();
            let Some(r) = bounded(
                request_limit,
                get(&node.url(&page_path(p)), &[("host", SITE_HOST)]),
            )
            .await
            else {
                findings.failed_reads.push(format!(
                    "final read node {n} page {p}: no answer within {request_limit:?}"
                ));
                continue;
            };
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
    for node in &nodes {
        let caje = node.caje.as_ref().unwrap();
        let (Some(stats), Some(status)) = (
            bounded(request_limit, caje.admin("GET", "/_caje/stats")).await,
            bounded(request_limit, caje.admin("GET", "/_caje/status")).await,
        ) else {
            panic!(
                "{label}: seed {seed}: a node did not answer its stats and status within \
                 {request_limit:?}\n{}{}",
                trace.last(),
                keep_dirs(&nodes)
            );
        };
        report.peer_fills += stats.json()["peer_fills"].as_u64().unwrap_or(0);
        let status = status.json();
        report.roles.push((
            status["role"].as_str().unwrap_or("?").to_owned(),
            status["manifest"]["queue"]["halts"].as_u64().unwrap_or(0),
        ));
    }
    report.origin_requests = origin.total().await;
    println!(
        "{label}: seed {seed}: {} reads, {} bump+purge ({} while a node was down), {} kill -9, \
         {} SIGTERM; slowest purge {} ms ({} answered 202 queued); every purge applied everywhere {} ms after the heal; \
         origin {} requests ({} while quiet); {} peer fills",
        report.reads,
        report.bumps,
        report.purges_while_down,
        report.kills,
        report.terms,
        report.slowest_purge.as_millis(),
        report.queued_purges,
        report.applied_after.as_millis(),
        report.origin_requests,
        report.quiet_requests,
        report.peer_fills
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
                "--- node {i} ({}) stderr (last lines, newest first)\n{}\n",
                node.spec.name,
                tail.join("\n")
            ));
        }
        panic!(
            "{label}: seed {seed} (replay with CONVERGENCE_SEED={seed} CONVERGENCE_SECS={secs}) \
             failed: {problems:#?}\n{logs}{}{}",
            trace.last(),
            keep_dirs(&nodes)
        );
    }
    // Stopped here, in order, so that a caller's storage (a LiteFS mount) outlives them.
    for i in 0..nodes.len() {
        if let Some(mut caje) = nodes[i].caje.take() {
            let status = caje.stop();
            if status.code() != Some(0) {
                panic!(
                    "{label}: seed {seed}: node {i}: SIGTERM exit {status} at the end\n{}",
                    keep_dirs(&nodes)
                );
            }
        }
    }
    report.took = began.elapsed();
    report
}

/// Keeps the nodes' directories (config, cache, every process's stderr, a core dump if one
/// was written) after the test, for a failure to be looked at; says where they are.
fn keep_dirs(nodes: &[Node]) -> String {
    let mut kept = String::from("node directories kept for inspection:\n");
    for (i, node) in nodes.iter().enumerate() {
        kept.push_str(&format!("  node {i}: {}\n", node.spec.dir.root().display()));
        // A reference never released: the temp dir is not deleted when the test ends.
        std::mem::forget(node.spec.dir.clone());
    }
    kept
}

async fn bump(origin: &Origin, p: usize) -> u64 {
    let r = crate::support::post(&origin.url(&format!("/_origin/bump?path=/gen/c{p}")), &[]).await;
    assert_eq!(r.status, 200, "bump: {}", r.text());
    r.json()["version"]
        .as_u64()
        .expect("bump answers its version")
}
