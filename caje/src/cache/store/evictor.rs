//! The thread that deletes evicted entries' files, so eviction never runs on a request's or a
//! fill's time.
//!
//! By the time an entry gets here it is already out of the index (and the eviction policy),
//! so no new hit can find it. A hit that found it just before keeps serving: on Linux an open
//! file descriptor keeps an unlinked file readable to its end, and a hit that tries to open
//! the file after the unlink sees `NotFound` for an entry that is no longer current, which
//! the hit path turns into a miss ([`crate::file_body`]). A torn body is never served.
//!
//! The unlink itself is [`Store::unlink_unheld`]: a fill of the same page may have committed
//! a new version under the same name since, and that file must stay.
//!
//! If caje stops before the files are unlinked, the next start-up scan finds them, loads
//! them into the policy, and evicts again whatever is over the cap.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::mpsc;

use super::{entry_path, EntryRef, Inner, Store, StoreEvent};
use crate::stats::Stats;

pub(super) struct Evictor {
    tx: std_mpsc::Sender<Vec<EntryRef>>,
    /// The receiving end until [`Evictor::start`] hands it to the thread.
    rx: Mutex<Option<std_mpsc::Receiver<Vec<EntryRef>>>>,
    /// The layout root (where the entry files are).
    root: PathBuf,
    stats: Arc<Stats>,
    events: mpsc::UnboundedSender<StoreEvent>,
}

impl Evictor {
    /// The queue; evictions queued before [`Evictor::start`] wait in it.
    pub(super) fn new(
        root: PathBuf,
        stats: Arc<Stats>,
        events: mpsc::UnboundedSender<StoreEvent>,
    ) -> Evictor {
        let (tx, rx) = std_mpsc::channel::<Vec<EntryRef>>();
        Evictor {
            tx,
            rx: Mutex::new(Some(rx)),
            root,
            stats,
            events,
        }
    }

    /// Starts the thread. It holds the store weakly (the store holds the queue's sender) and
    /// ends when the store is dropped.
    pub(super) fn start(&self, store: Weak<Inner>) -> io::Result<()> {
        let Some(rx) = self.rx.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return Ok(());
        };
        let (root, stats, events) = (self.root.clone(), self.stats.clone(), self.events.clone());
        std::thread::Builder::new()
            .name("caje-evict".into())
            .spawn(move || {
                for batch in rx {
                    match store.upgrade() {
                        Some(inner) => Store { inner }.unlink_unheld(&batch),
                        // The store is gone, so no fill can commit a new version any more.
                        None => unlink(&root, &batch),
                    }
                    counted(&batch, &stats, &events);
                }
            })?;
        Ok(())
    }

    /// Queues evicted entries for deletion. Never blocks.
    pub(super) fn evict(&self, entries: Vec<EntryRef>) {
        if entries.is_empty() {
            return;
        }
        if let Err(std_mpsc::SendError(entries)) = self.tx.send(entries) {
            // The thread is gone (it cannot panic on its own, but be safe). Callers hold the
            // store, which cannot be reached from here; unlinking without the commit lock
            // only risks a newer version of the same page becoming a miss.
            unlink(&self.root, &entries);
            counted(&entries, &self.stats, &self.events);
        }
    }
}

fn unlink(root: &Path, entries: &[EntryRef]) {
    for e in entries {
        let _ = std::fs::remove_file(entry_path(root, &e.name()));
    }
}

fn counted(entries: &[EntryRef], stats: &Stats, events: &mpsc::UnboundedSender<StoreEvent>) {
    for e in entries {
        // Counted once the file is gone, so a reader of the counter can rely on that.
        Stats::incr(&stats.evictions);
        tracing::debug!("evicted {}", e.name());
        let _ = events.send(StoreEvent::Removed(*e));
    }
}
