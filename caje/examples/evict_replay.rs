//! Trace replay: caje's eviction policy ([`caje::cache::evict::Policy`], S3-FIFO) against an
//! exact LRU of the same capacity, on Zipf traces with and without a one-time scan.
//!
//! Run with `cargo run --release -p caje --example evict_replay` (about a minute); it prints
//! a Markdown table. Everything is seeded, so two runs print the same table.
//!
//! # The traces
//! - 1,000,000 objects; request ranks drawn from Zipf(alpha) for alpha = 0.7, 0.9, 1.1.
//! - Object sizes: `uniform` (every object 16 KiB) or `mixed`, a fixed log-uniform
//!   distribution from 1 KiB to 1 MiB decided by each object's id (independent of its rank).
//! - The cache holds 1% or 10% of all objects' bytes; C is that capacity in average objects
//!   (10,000 or 100,000).
//! - Each trace warms the cache with 10·C requests (not counted), then measures 10·C requests.
//!   A scan trace inserts, halfway through the measured part, a one-time scan of objects never
//!   requested otherwise whose bytes add up to twice the capacity (about 2·C requests); those
//!   requests are counted (they miss in both policies).
//! - Hit ratios: object (hits / requests) and byte (bytes hit / bytes requested), over the
//!   measured part; for scan traces also over the 2·C requests right after the scan, which is
//!   where an LRU pays for having been flushed.

use std::collections::HashMap;
use std::time::Instant;

use caje::cache::evict::Policy;

const OBJECTS: usize = 1_000_000;
const SEED: u64 = 0x00ca_7e5e_ed00_0001;

/// splitmix64: small, fast, good enough to drive a simulation.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Zipf over ranks 0..n by inverting the cumulative distribution (binary search).
struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    fn new(n: usize, alpha: f64) -> Zipf {
        let mut cdf = Vec::with_capacity(n);
        let mut sum = 0.0;
        for k in 1..=n {
            sum += 1.0 / (k as f64).powf(alpha);
            cdf.push(sum);
        }
        for c in &mut cdf {
            *c /= sum;
        }
        Zipf { cdf }
    }
    fn sample(&self, rng: &mut Rng) -> u64 {
        let u = rng.unit();
        self.cdf.partition_point(|&c| c < u).min(self.cdf.len() - 1) as u64
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Sizes {
    Uniform,
    Mixed,
}

impl Sizes {
    fn of(self, id: u64) -> u64 {
        match self {
            Sizes::Uniform => 16 * 1024,
            Sizes::Mixed => {
                // log-uniform in [2^10, 2^20]
                let u = (mix(id ^ 0x5eed) >> 11) as f64 / (1u64 << 53) as f64;
                (1024.0 * 2f64.powf(10.0 * u)) as u64
            }
        }
    }
    fn name(self) -> &'static str {
        match self {
            Sizes::Uniform => "uniform 16 KiB",
            Sizes::Mixed => "mixed 1 KiB-1 MiB",
        }
    }
}

/// The object's cache key as caje would compute it: a uniformly distributed 128-bit hash.
fn key_of(id: u64) -> u128 {
    u128::from(mix(id)) << 64 | u128::from(mix(id ^ 0xdead_beef))
}

/// An exact byte-weighted LRU: a hash map into a doubly linked list kept in a slab.
struct Lru {
    capacity: u64,
    used: u64,
    map: HashMap<u64, usize>,
    nodes: Vec<Node>,
    free: Vec<usize>,
    head: usize,
    tail: usize,
}

#[derive(Clone, Copy)]
struct Node {
    id: u64,
    size: u64,
    prev: usize,
    next: usize,
}

const NIL: usize = usize::MAX;

impl Lru {
    fn new(capacity: u64) -> Lru {
        Lru {
            capacity,
            used: 0,
            map: HashMap::new(),
            nodes: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
        }
    }
    fn unlink(&mut self, i: usize) {
        let Node { prev, next, .. } = self.nodes[i];
        if prev == NIL {
            self.head = next;
        } else {
            self.nodes[prev].next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.nodes[next].prev = prev;
        }
    }
    fn push_front(&mut self, i: usize) {
        self.nodes[i].prev = NIL;
        self.nodes[i].next = self.head;
        if self.head != NIL {
            self.nodes[self.head].prev = i;
        }
        self.head = i;
        if self.tail == NIL {
            self.tail = i;
        }
    }
    /// Returns whether `id` was a hit; on a miss, admits it.
    fn access(&mut self, id: u64, size: u64) -> bool {
        if let Some(&i) = self.map.get(&id) {
            self.unlink(i);
            self.push_front(i);
            return true;
        }
        if size > self.capacity {
            return false;
        }
        while self.used + size > self.capacity {
            let t = self.tail;
            self.unlink(t);
            self.used -= self.nodes[t].size;
            self.map.remove(&self.nodes[t].id);
            self.free.push(t);
        }
        let node = Node {
            id,
            size,
            prev: NIL,
            next: NIL,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.nodes[i] = node;
                i
            }
            None => {
                self.nodes.push(node);
                self.nodes.len() - 1
            }
        };
        self.push_front(i);
        self.map.insert(id, i);
        self.used += size;
        false
    }
}

/// caje's policy driven the way the store drives it: a hit touches, a miss admits.
fn s3_access(p: &mut Policy, id: u64, size: u64) -> bool {
    let k = key_of(id);
    if p.touch(k) {
        return true;
    }
    p.admit(k, size);
    false
}

#[derive(Default, Clone, Copy)]
struct Ratio {
    hits: u64,
    reqs: u64,
    hit_bytes: u64,
    bytes: u64,
}

impl Ratio {
    fn add(&mut self, hit: bool, size: u64) {
        self.reqs += 1;
        self.bytes += size;
        if hit {
            self.hits += 1;
            self.hit_bytes += size;
        }
    }
    fn object(&self) -> f64 {
        100.0 * self.hits as f64 / self.reqs.max(1) as f64
    }
    fn byte(&self) -> f64 {
        100.0 * self.hit_bytes as f64 / self.bytes.max(1) as f64
    }
}

/// One request of a trace: the object id and whether it is counted, and in which window.
struct Trace {
    ids: Vec<u64>,
    /// Index of the first measured request.
    measure_from: usize,
    /// The post-scan window, for scan traces.
    after_scan: Option<(usize, usize)>,
}

fn build_trace(zipf: &Zipf, sizes: Sizes, c: usize, capacity: u64, scan: bool, seed: u64) -> Trace {
    let mut rng = Rng(seed);
    let mut ids = Vec::with_capacity(22 * c);
    for _ in 0..10 * c {
        ids.push(zipf.sample(&mut rng));
    }
    let measure_from = ids.len();
    for _ in 0..5 * c {
        ids.push(zipf.sample(&mut rng));
    }
    let mut after_scan = None;
    if scan {
        // Fresh objects (ids beyond the Zipf universe), twice the capacity in bytes.
        let mut bytes = 0;
        let mut id = OBJECTS as u64;
        while bytes < 2 * capacity {
            bytes += sizes.of(id);
            ids.push(id);
            id += 1;
        }
        after_scan = Some((ids.len(), ids.len() + 2 * c));
    }
    for _ in 0..5 * c {
        ids.push(zipf.sample(&mut rng));
    }
    Trace {
        ids,
        measure_from,
        after_scan,
    }
}

struct Outcome {
    all: Ratio,
    after: Ratio,
}

fn replay(trace: &Trace, sizes: Sizes, mut access: impl FnMut(u64, u64) -> bool) -> Outcome {
    let mut all = Ratio::default();
    let mut after = Ratio::default();
    for (i, &id) in trace.ids.iter().enumerate() {
        let size = sizes.of(id);
        let hit = access(id, size);
        if i >= trace.measure_from {
            all.add(hit, size);
        }
        if let Some((a, b)) = trace.after_scan {
            if (a..b).contains(&i) {
                after.add(hit, size);
            }
        }
    }
    Outcome { all, after }
}

fn main() {
    let started = Instant::now();
    println!("| alpha | cache | sizes | scan | LRU obj % | S3-FIFO obj % | Δ obj | LRU byte % | S3-FIFO byte % | Δ byte | after scan: LRU obj % | S3-FIFO obj % | Δ obj |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut worst_delta = f64::INFINITY;
    let mut worst_scan_delta = f64::INFINITY;
    let mut bytes_per_entry = Vec::new();
    for (ai, alpha) in [0.7, 0.9, 1.1].into_iter().enumerate() {
        let zipf = Zipf::new(OBJECTS, alpha);
        for sizes in [Sizes::Uniform, Sizes::Mixed] {
            let total: u64 = (0..OBJECTS as u64).map(|id| sizes.of(id)).sum();
            for percent in [1u64, 10] {
                let capacity = total / 100 * percent;
                let c = OBJECTS / 100 * percent as usize;
                for scan in [false, true] {
                    let seed = SEED ^ (ai as u64) << 8 ^ percent << 16;
                    let trace = build_trace(&zipf, sizes, c, capacity, scan, seed);
                    let mut lru = Lru::new(capacity);
                    let l = replay(&trace, sizes, |id, s| lru.access(id, s));
                    let mut p = Policy::new(capacity, None);
                    let s = replay(&trace, sizes, |id, sz| s3_access(&mut p, id, sz));
                    let u = p.usage();
                    bytes_per_entry.push(p.heap_bytes() as f64 / u.entries.max(1) as f64);
                    let d_obj = s.all.object() - l.all.object();
                    let d_byte = s.all.byte() - l.all.byte();
                    worst_delta = worst_delta.min(d_obj).min(d_byte);
                    let after = if scan {
                        let d = s.after.object() - l.after.object();
                        worst_scan_delta = worst_scan_delta.min(d);
                        format!(
                            "{:.1} | {:.1} | {:+.1}",
                            l.after.object(),
                            s.after.object(),
                            d
                        )
                    } else {
                        "- | - | -".to_owned()
                    };
                    println!(
                        "| {alpha} | {percent}% | {} | {} | {:.1} | {:.1} | {:+.1} | {:.1} | {:.1} | {:+.1} | {after} |",
                        sizes.name(),
                        if scan { "yes" } else { "no" },
                        l.all.object(),
                        s.all.object(),
                        d_obj,
                        l.all.byte(),
                        s.all.byte(),
                        d_byte,
                    );
                }
            }
        }
    }
    println!();
    println!("worst Δ over all traces (object and byte): {worst_delta:+.1} points");
    println!("worst Δ right after a scan (object): {worst_scan_delta:+.1} points");
    let max_bpe = bytes_per_entry.iter().cloned().fold(0.0, f64::max);
    println!("policy heap per resident entry at the end of a run: at most {max_bpe:.0} bytes");

    // The policy's own memory at 1,000,000 resident entries with the ghost full: a million
    // entries all used twice (so they reach the main queue), then a million new ones used
    // once (evicted from the small queue into the ghost, which remembers about as many as
    // the main queue holds).
    let mut p = Policy::new(1_000_000, None);
    for id in 0..1_000_000u64 {
        p.admit(key_of(id), 1);
    }
    for id in 0..1_000_000u64 {
        p.touch(key_of(id));
    }
    for id in 1_000_000..2_000_000u64 {
        p.admit(key_of(id), 1);
    }
    let u = p.usage();
    let (ghosts, ghost_bytes) = p.ghost_usage();
    println!(
        "1,000,000-entry policy (full, ghost populated): {} entries, {:.1} MiB heap, {:.0} bytes per entry; of which the ghost: {} fingerprints, {:.1} MiB, {:.1} bytes per fingerprint",
        u.entries,
        p.heap_bytes() as f64 / 1048576.0,
        p.heap_bytes() as f64 / u.entries as f64,
        ghosts,
        ghost_bytes as f64 / 1048576.0,
        ghost_bytes as f64 / ghosts.max(1) as f64,
    );
    println!("took {:.1} s", started.elapsed().as_secs_f64());
}
