//! The bounded queue from the receivers to the engine thread. When it is full, receivers
//! refuse the request with a retryable error instead of buffering without limit: the
//! exporter keeps the data and retries, so nothing already accepted is lost.
//!
//! It is bounded twice: in batches, and in spans, so that a few huge export requests cannot
//! hold more memory than many small ones (a batch always fits into an empty queue).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

use stormwatch_model::Span;

/// The queue is full; retry later.
#[derive(Debug)]
pub struct QueueFull;

/// Every sender is gone and the queue is drained: the input has ended.
#[derive(Debug)]
pub struct Disconnected;

/// Which topic a Kafka position is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceTopic {
    /// The span input (`kafka.input_topic`).
    Input,
    /// The engines' window partials (`kafka.windows_topic`).
    Windows,
}

/// Where a batch came from in a Kafka topic, for committing once it is settled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourcePosition {
    /// The topic.
    pub topic: SourceTopic,
    /// The partition.
    pub partition: i32,
    /// The message's offset.
    pub offset: i64,
}

/// What the engine thread is sent.
#[derive(Debug)]
pub enum Batch {
    /// Decoded spans, and the Kafka message they came from (`None` for OTLP and files). A
    /// malformed message is sent with no spans, so its offset is committed in order.
    Spans {
        /// The spans.
        spans: Vec<Span>,
        /// Where they came from.
        position: Option<SourcePosition>,
    },
    /// A message of the windows topic (another engine's closed windows), undecoded.
    Windows {
        /// The message.
        payload: Vec<u8>,
        /// Where it came from.
        position: SourcePosition,
    },
    /// This engine became its group's window merger: the group's shared baseline snapshots
    /// (engine, document), to continue from the previous merger's window baselines.
    Snapshots(Vec<(String, Vec<u8>)>),
}

impl Batch {
    /// Spans it carries (what the queue's span bound counts).
    pub fn span_count(&self) -> usize {
        match self {
            Batch::Spans { spans, .. } => spans.len(),
            Batch::Windows { .. } | Batch::Snapshots(_) => 0,
        }
    }
}

/// The sending side, cloned into every receiver.
#[derive(Clone)]
pub struct SpanQueue {
    sender: SyncSender<Batch>,
    depth: Arc<AtomicUsize>,
    spans: Arc<AtomicUsize>,
    max_spans: usize,
}

impl std::fmt::Debug for SpanQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpanQueue").finish_non_exhaustive()
    }
}

/// The engine's side.
pub struct SpanReceiver {
    receiver: mpsc::Receiver<Batch>,
    depth: Arc<AtomicUsize>,
    spans: Arc<AtomicUsize>,
}

impl std::fmt::Debug for SpanReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpanReceiver").finish_non_exhaustive()
    }
}

/// A queue of at most `capacity` span batches and, for what receivers offer without waiting,
/// at most `max_spans` spans.
pub fn span_queue(capacity: usize, max_spans: usize) -> (SpanQueue, SpanReceiver) {
    let (sender, receiver) = mpsc::sync_channel(capacity);
    let depth = Arc::new(AtomicUsize::new(0));
    let spans = Arc::new(AtomicUsize::new(0));
    (
        SpanQueue { sender, depth: depth.clone(), spans: spans.clone(), max_spans },
        SpanReceiver { receiver, depth, spans },
    )
}

impl SpanQueue {
    /// Enqueues a batch without waiting; `Err(QueueFull)` when the engine is behind (or gone).
    pub fn try_send(&self, spans: Vec<Span>) -> Result<(), QueueFull> {
        if spans.is_empty() {
            return Ok(());
        }
        let count = spans.len();
        let queued = self.spans.fetch_add(count, Ordering::Relaxed);
        if queued > 0 && queued + count > self.max_spans {
            self.spans.fetch_sub(count, Ordering::Relaxed);
            return Err(QueueFull);
        }
        self.depth.fetch_add(1, Ordering::Relaxed);
        match self.sender.try_send(Batch::Spans { spans, position: None }) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.depth.fetch_sub(1, Ordering::Relaxed);
                self.spans.fetch_sub(count, Ordering::Relaxed);
                Err(QueueFull)
            }
        }
    }

    /// Enqueues a batch, waiting for room (replay and Kafka input: back-pressure, not refusal).
    pub fn send_blocking(&self, spans: Vec<Span>) -> Result<(), QueueFull> {
        self.send_batch(Batch::Spans { spans, position: None })
    }

    /// Enqueues a batch with its source position, waiting for room. Sent even when it has no
    /// spans (a malformed message), so its offset is committed in order.
    pub fn send_batch(&self, batch: Batch) -> Result<(), QueueFull> {
        let count = batch.span_count();
        self.depth.fetch_add(1, Ordering::Relaxed);
        self.spans.fetch_add(count, Ordering::Relaxed);
        self.sender.send(batch).map_err(|_| {
            self.depth.fetch_sub(1, Ordering::Relaxed);
            self.spans.fetch_sub(count, Ordering::Relaxed);
            QueueFull
        })
    }
}

impl SpanReceiver {
    /// The next batch, or `Ok(None)` after `timeout` without one; `Err` once every sender is
    /// gone and the queue is drained.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Option<Batch>, Disconnected> {
        match self.receiver.recv_timeout(timeout) {
            Ok(batch) => {
                self.taken(&batch);
                Ok(Some(batch))
            }
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => Err(Disconnected),
        }
    }

    /// Batches waiting (for the `queue_depth` gauge).
    pub fn depth(&self) -> usize {
        self.depth.load(Ordering::Relaxed)
    }

    /// Spans waiting.
    pub fn spans(&self) -> usize {
        self.spans.load(Ordering::Relaxed)
    }

    /// A batch if one is waiting right now.
    pub fn try_recv(&self) -> Option<Batch> {
        let batch = self.receiver.try_recv().ok()?;
        self.taken(&batch);
        Some(batch)
    }

    fn taken(&self, batch: &Batch) {
        self.depth.fetch_sub(1, Ordering::Relaxed);
        self.spans.fetch_sub(batch.span_count(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_follows_sends_and_receives() {
        let (queue, receiver) = span_queue(2, 1_000);
        assert!(queue.try_send(Vec::new()).is_ok(), "empty batches are not queued");
        assert_eq!(receiver.depth(), 0);
        let mut builder = stormwatch_model::builder::TraceBuilder::new(1, 1);
        builder.server("a", "b", None);
        let spans = builder.build();
        queue.try_send(spans.clone()).unwrap();
        queue.try_send(spans.clone()).unwrap();
        assert!(queue.try_send(spans).is_err(), "full");
        assert_eq!(receiver.depth(), 2);
        receiver.try_recv().unwrap();
        assert_eq!(receiver.depth(), 1);
    }

    #[test]
    fn spans_are_bounded_too_but_any_batch_fits_an_empty_queue() {
        let (queue, receiver) = span_queue(100, 10);
        let batch = |n: usize| {
            let mut builder = stormwatch_model::builder::TraceBuilder::new(n as u64, 1);
            let root = builder.server("a", "b", None);
            for _ in 1..n {
                builder.internal("a", "c", root);
            }
            builder.build()
        };
        queue.try_send(batch(25)).unwrap();
        assert!(queue.try_send(batch(1)).is_err(), "over the span budget");
        assert_eq!(receiver.spans(), 25);
        receiver.try_recv().unwrap();
        queue.try_send(batch(6)).unwrap();
        queue.try_send(batch(4)).unwrap();
        assert!(queue.try_send(batch(1)).is_err());
        assert_eq!((receiver.depth(), receiver.spans()), (2, 10));
    }
}
