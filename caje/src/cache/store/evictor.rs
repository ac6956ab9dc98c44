//! The thread that deletes evicted entries' files, so eviction never runs on a request's or a
//! fill's time.
//!
//! By the time an entry gets here it is already out of the index (and the eviction policy),
//! so no new hit can find it. A hit that found it just before keeps serving: on Linux an open
//! file descriptor keeps an unlinked file readable to its end, and a hit that tries to open
//! the body after the unlink sees `NotFound` for an entry that is no longer current, which the
//! hit path turns into a miss ([`crate::body`]). A torn body is never served.
//!
//! If caje stops before the files are unlinked, the next start-up scan finds their metadata,
//! loads them into the policy, and evicts again whatever is over the cap.

use std::fs;
use std::io;
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::{Entry, StoreEvent};
use crate::stats::Stats;

pub(super) struct Evictor {
    tx: std_mpsc::Sender<Vec<Arc<Entry>>>,
    stats: Arc<Stats>,
    events: mpsc::UnboundedSender<StoreEvent>,
}

impl Evictor {
    /// Starts the thread; it ends when the store (which holds the sender) is dropped.
    pub(super) fn spawn(
        stats: Arc<Stats>,
        events: mpsc::UnboundedSender<StoreEvent>,
    ) -> io::Result<Evictor> {
        let (tx, rx) = std_mpsc::channel::<Vec<Arc<Entry>>>();
        let (thread_stats, thread_events) = (stats.clone(), events.clone());
        std::thread::Builder::new()
            .name("caje-evict".into())
            .spawn(move || {
                for batch in rx {
                    delete(&batch, &thread_stats, &thread_events);
                }
            })?;
        Ok(Evictor { tx, stats, events })
    }

    /// Queues evicted entries for deletion. Never blocks.
    pub(super) fn evict(&self, entries: Vec<Arc<Entry>>) {
        if entries.is_empty() {
            return;
        }
        if let Err(std_mpsc::SendError(entries)) = self.tx.send(entries) {
            // The thread is gone (it cannot panic on its own, but be safe): delete here.
            delete(&entries, &self.stats, &self.events);
        }
    }
}

fn delete(entries: &[Arc<Entry>], stats: &Stats, events: &mpsc::UnboundedSender<StoreEvent>) {
    for e in entries {
        let _ = fs::remove_file(e.meta_path());
        let _ = fs::remove_file(e.body_path());
        // Counted once the files are gone, so a reader of the counter can rely on that.
        Stats::incr(&stats.evictions);
        tracing::debug!(host = %e.meta.host, path = %e.meta.path, "evicted {}", e.name);
        let _ = events.send(StoreEvent::Removed(e.clone()));
    }
}
