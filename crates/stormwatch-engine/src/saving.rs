//! Snapshots made off the engine thread. Encoding the baselines is the costliest thing done
//! with them at once (about 2.5 s and a 530 MB document at 100,000 edges, then a write and an
//! fsync), so the engine thread only copies the store (about a tenth of that) and hands the
//! copy to the snapshot thread, which encodes it and writes it to the models directory, shares
//! it with the group, or answers `GET /api/snapshot` with it.
//!
//! Bounds: at most [`MOST_PENDING`] copies exist at once (one being encoded, one waiting). A
//! periodic snapshot due while they do waits for the next turn; an export is answered 503.
//! Exports take at most [`EXPORT_SHARE`] of the engine thread's time: after a copy that took
//! `t`, the next export's copy waits `t / EXPORT_SHARE - t` (an export asked sooner is a 503
//! that says when to ask again), so a client asking back to back cannot hold the engine up.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc as std_mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Instant;

use stormwatch_baseline::{encode_snapshot, write_snapshot_document, BaselineStore};
use stormwatch_io::Metrics;
use tokio::sync::{mpsc, oneshot};

use crate::delivery::SinkItem;

/// Copies of the store sent to the snapshot thread and not yet encoded and written, at most.
pub(crate) const MOST_PENDING: usize = 2;

/// The most of the engine thread's time exports may take copying the store.
pub(crate) const EXPORT_SHARE: f64 = 0.1;

/// Where saved snapshots go: the models directory, the group's baselines topic (and key).
pub(crate) struct Destinations {
    pub(crate) dir: Option<PathBuf>,
    pub(crate) share: Option<(String, String)>,
    pub(crate) sink: mpsc::Sender<SinkItem>,
    pub(crate) metrics: Arc<Metrics>,
}

enum Job {
    /// Encode, write and share; `done` is told how the write went (the last snapshot waits).
    Save { store: Box<BaselineStore>, done: Option<std_mpsc::Sender<Result<(), String>>> },
    /// Encode and answer the admin API with the document.
    Export { store: Box<BaselineStore>, reply: oneshot::Sender<(u16, String)> },
}

/// The engine thread's side of the snapshot thread, started at the first snapshot.
pub(crate) struct Saver {
    /// Snapshots are saved somewhere (a models directory, a group's topic).
    saves: bool,
    /// Until the snapshot thread takes them.
    destinations: Option<Destinations>,
    jobs: Option<std_mpsc::Sender<Job>>,
    worker: Option<JoinHandle<()>>,
    pending: Arc<AtomicUsize>,
    /// When the next export may copy the store ([`EXPORT_SHARE`]).
    next_export: Option<Instant>,
}

impl Saver {
    pub(crate) fn new(destinations: Destinations) -> Saver {
        let saves = destinations.dir.is_some() || destinations.share.is_some();
        let pending = Arc::default();
        Saver { saves, destinations: Some(destinations), jobs: None, worker: None, pending, next_export: None }
    }

    /// Whether another copy may be made now (fewer than [`MOST_PENDING`] are being saved).
    fn has_room(&self) -> bool {
        self.pending.load(Ordering::Acquire) < MOST_PENDING
    }

    /// A periodic snapshot of `store`, unless the last ones are still being written (then
    /// `false`: try again later).
    pub(crate) fn save(&mut self, store: &BaselineStore) -> bool {
        if !self.has_room() {
            return false;
        }
        self.send(Job::Save { store: Box::new(store.clone()), done: None });
        true
    }

    /// `GET /api/snapshot`: the document of `store` as it is now, encoded off this thread.
    pub(crate) fn export(&mut self, store: &BaselineStore, reply: oneshot::Sender<(u16, String)>) {
        let refuse = |reply: oneshot::Sender<(u16, String)>, message: String| {
            let _ = reply.send((503, serde_json::json!({ "error": message }).to_string()));
        };
        if !self.has_room() {
            return refuse(
                reply,
                format!("{MOST_PENDING} snapshots of the baselines are being made; ask again in a few seconds"),
            );
        }
        let now = Instant::now();
        if let Some(wait) = self.next_export.map(|at| at.saturating_duration_since(now)).filter(|w| !w.is_zero()) {
            return refuse(
                reply,
                format!(
                    "the last export was copied moments ago, and exports take at most {:.0}% of the engine's time; \
                 ask again in {} ms",
                    EXPORT_SHARE * 100.0,
                    wait.as_millis() + 1
                ),
            );
        }
        let copy = Box::new(store.clone());
        let took = now.elapsed();
        self.next_export = Some(Instant::now() + took.mul_f64(1.0 / EXPORT_SHARE - 1.0));
        self.send(Job::Export { store: copy, reply });
    }

    /// The last snapshot: written after those pending, and waited for. `None` when snapshots
    /// go nowhere.
    pub(crate) fn finish(&mut self, store: &BaselineStore) -> Option<Result<(), String>> {
        let result = self.saves.then(|| {
            let (done, written) = std_mpsc::channel();
            self.send(Job::Save { store: Box::new(store.clone()), done: Some(done) });
            written.recv().unwrap_or_else(|_| Err("the snapshot thread stopped".into()))
        });
        drop(self.jobs.take());
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
        result
    }

    fn send(&mut self, job: Job) {
        if self.jobs.is_none() {
            let destinations = self.destinations.take().expect("the destinations of a saver not started");
            let (jobs, queue) = std_mpsc::channel();
            let pending = self.pending.clone();
            let worker = std::thread::Builder::new()
                .name("stormwatch-snapshot".into())
                .spawn(move || work(&queue, &destinations, &pending))
                .expect("cannot start the snapshot thread");
            (self.jobs, self.worker) = (Some(jobs), Some(worker));
        }
        self.pending.fetch_add(1, Ordering::AcqRel);
        if let Some(jobs) = &self.jobs {
            let _ = jobs.send(job);
        }
    }
}

/// The snapshot thread: each copy encoded, then written, shared or answered, and dropped.
fn work(queue: &std_mpsc::Receiver<Job>, to: &Destinations, pending: &AtomicUsize) {
    while let Ok(job) = queue.recv() {
        match job {
            Job::Save { store, done } => {
                let document = encode_snapshot(&store);
                let edges = store.edges_tracked();
                drop(store);
                let written = to.dir.as_ref().map(|dir| write(dir, &document, edges, &to.metrics));
                if let Some((topic, key)) = &to.share {
                    let (topic, key) = (topic.clone(), key.clone());
                    let _ = to.sink.blocking_send(SinkItem::Snapshot { topic, key, payload: document });
                }
                if let Some(done) = done {
                    let _ = done.send(written.unwrap_or(Ok(())));
                }
            }
            Job::Export { store, reply } => {
                let document = encode_snapshot(&store);
                drop(store);
                let _ = reply.send((200, String::from_utf8(document).unwrap_or_default()));
            }
        }
        pending.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Writes an encoded snapshot to the models directory.
fn write(dir: &std::path::Path, document: &[u8], edges: usize, metrics: &Metrics) -> Result<(), String> {
    match write_snapshot_document(dir, document) {
        Ok(path) => {
            Metrics::add(&metrics.snapshots_written_total, 1);
            tracing::debug!(path = %path.display(), edges, "baseline snapshot written");
            Ok(())
        }
        Err(error) => {
            tracing::error!(%error, "baseline snapshot failed");
            Err(error.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use stormwatch_model::{Edge, Node, NodeKind, Sym};

    use super::*;

    fn store() -> BaselineStore {
        let mut store = BaselineStore::new(100);
        let edge = Edge {
            from: Node::service(Sym::new("gateway"), Sym::new("GET /feed")),
            to: Node { service: Sym::new("postgresql"), operation: Sym::new("SELECT posts"), kind: NodeKind::Database },
        };
        for k in 0..20 {
            store.observe_fanout(edge, &[1 + k % 4], 1_000 + k);
        }
        store
    }

    fn saver(dir: Option<PathBuf>) -> (Saver, mpsc::Receiver<SinkItem>) {
        let (sink, shared) = mpsc::channel(4);
        let share = Some(("baselines".to_string(), "engine-a".to_string()));
        (Saver::new(Destinations { dir, share, sink, metrics: Arc::new(Metrics::default()) }), shared)
    }

    /// The export is the store's document as it was when asked, even though the engine learns
    /// on; saves are written and shared; the last one is waited for.
    #[test]
    fn snapshots_are_the_store_as_copied_and_the_last_is_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let (mut saver, mut shared) = saver(Some(dir.path().to_path_buf()));
        let mut store = store();
        let asked = encode_snapshot(&store);
        let (reply, answer) = oneshot::channel();
        saver.export(&store, reply);
        store.observe_fanout(
            Edge {
                from: Node::service(Sym::new("gateway"), Sym::new("GET /feed")),
                to: Node::service(Sym::new("users"), Sym::new("GetUser")),
            },
            &[2],
            5_000,
        );
        let (status, document) = answer.blocking_recv().unwrap();
        assert_eq!((status, document.as_bytes()), (200, asked.as_slice()));

        assert!(saver.save(&store));
        assert_eq!(saver.finish(&store), Some(Ok(())));
        let written = std::fs::read(dir.path().join(stormwatch_baseline::SNAPSHOT_FILE)).unwrap();
        assert_eq!(written.strip_suffix(b"\n").unwrap(), encode_snapshot(&store).as_slice());
        let mut payloads = 0;
        while let Ok(SinkItem::Snapshot { payload, .. }) = shared.try_recv() {
            assert_eq!(payload, encode_snapshot(&store));
            payloads += 1;
        }
        assert_eq!(payloads, 2, "the periodic snapshot and the last, shared");
        assert_eq!(saver.pending.load(Ordering::Acquire), 0);
    }

    /// No more than MOST_PENDING copies: past it, a periodic snapshot waits and an export is
    /// a 503 that says to ask again.
    #[test]
    fn copies_are_bounded() {
        let (mut saver, _shared) = saver(None);
        saver.pending.store(MOST_PENDING, Ordering::Release);
        assert!(!saver.save(&store()));
        let (reply, answer) = oneshot::channel();
        saver.export(&store(), reply);
        let (status, body) = answer.blocking_recv().unwrap();
        assert_eq!(status, 503);
        assert!(body.contains("ask again"), "{body}");
        assert!(saver.jobs.is_none(), "nothing was copied or sent");
    }

    /// Exports asked back to back: the one after a copy waits nine times the copy's time, and
    /// is told when to ask again.
    #[test]
    fn exports_take_a_bounded_share_of_the_engine_thread() {
        let (mut saver, _shared) = saver(None);
        let (reply, answer) = oneshot::channel();
        saver.export(&store(), reply);
        assert_eq!(answer.blocking_recv().unwrap().0, 200);
        // As if that copy had taken a second.
        saver.next_export = Some(Instant::now() + std::time::Duration::from_secs(9));
        let (reply, answer) = oneshot::channel();
        saver.export(&store(), reply);
        let (status, body) = answer.blocking_recv().unwrap();
        assert_eq!(status, 503);
        assert!(body.contains("at most 10% of the engine's time; ask again in 9"), "{body}");
        saver.next_export = Some(Instant::now());
        let (reply, answer) = oneshot::channel();
        saver.export(&store(), reply);
        assert_eq!(answer.blocking_recv().unwrap().0, 200, "asked again when told");
    }

    /// Snapshots going nowhere: no last snapshot to wait for, and no thread until an export.
    #[test]
    fn a_saver_without_destinations_starts_no_thread() {
        let (sink, _shared) = mpsc::channel(1);
        let mut saver = Saver::new(Destinations { dir: None, share: None, sink, metrics: Arc::default() });
        assert_eq!(saver.finish(&store()), None);
        assert!(saver.worker.is_none());
    }
}
