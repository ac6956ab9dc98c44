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
use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::{shard_dir, EntryRef, StoreEvent};
use crate::stats::Stats;

pub(super) struct Evictor {
    tx: std_mpsc::Sender<Vec<EntryRef>>,
    root: PathBuf,
    stats: Arc<Stats>,
    events: mpsc::UnboundedSender<StoreEvent>,
}

impl Evictor {
    /// Starts the thread; it ends when the store (which holds the sender) is dropped.
    pub(super) fn spawn(
        root: PathBuf,
        stats: Arc<Stats>,
        events: mpsc::UnboundedSender<StoreEvent>,
    ) -> io::Result<Evictor> {
        let (tx, rx) = std_mpsc::channel::<Vec<EntryRef>>();
        let (thread_root, thread_stats, thread_events) =
            (root.clone(), stats.clone(), events.clone());
        std::thread::Builder::new()
            .name("caje-evict".into())
            .spawn(move || {
                for batch in rx {
                    delete(&thread_root, &batch, &thread_stats, &thread_events);
                }
            })?;
        Ok(Evictor {
            tx,
            root,
            stats,
            events,
        })
    }

    /// Queues evicted entries for deletion. Never blocks.
    pub(super) fn evict(&self, entries: Vec<EntryRef>) {
        if entries.is_empty() {
            return;
        }
        if let Err(std_mpsc::SendError(entries)) = self.tx.send(entries) {
            // The thread is gone (it cannot panic on its own, but be safe): delete here.
            delete(&self.root, &entries, &self.stats, &self.events);
        }
    }
}

fn delete(
    root: &Path,
    entries: &[EntryRef],
    stats: &Stats,
    events: &mpsc::UnboundedSender<StoreEvent>,
) {
    for e in entries {
        let name = e.name();
        let dir = shard_dir(root, &name);
        let meta = dir.join(format!("{name}.meta"));
        let body = e.body_file();
        // A fill of the same page may have committed since the eviction: its metadata has
        // the same name and names another body. Leave that one (the window between this
        // check and the unlink is a few microseconds, where it was the whole queue's delay).
        let replaced = fs::read(&meta)
            .ok()
            .and_then(|b| crate::cache::entry::EntryMeta::decode(&b).ok())
            .is_some_and(|m| m.body_file != body);
        if !replaced {
            let _ = fs::remove_file(&meta);
        }
        let _ = fs::remove_file(dir.join(body));
        // Counted once the files are gone, so a reader of the counter can rely on that.
        Stats::incr(&stats.evictions);
        tracing::debug!("evicted {name}");
        let _ = events.send(StoreEvent::Removed(*e));
    }
}
