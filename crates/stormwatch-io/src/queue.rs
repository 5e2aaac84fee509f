//! The bounded queue from the receivers to the engine thread. When it is full, receivers
//! refuse the request with a retryable error instead of buffering without limit: the
//! exporter keeps the data and retries, so nothing already accepted is lost.

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
    pub topic: SourceTopic,
    pub partition: i32,
    pub offset: i64,
}

/// Spans for the engine, and the Kafka message they came from (`None` for OTLP and files).
#[derive(Debug, Default)]
pub struct Batch {
    pub spans: Vec<Span>,
    pub position: Option<SourcePosition>,
    /// A message of the windows topic (another engine's closed windows), undecoded.
    pub windows: Option<Vec<u8>>,
    /// This engine became its group's window merger: the group's shared baseline snapshots
    /// (engine, document), to continue from the previous merger's window baselines.
    pub snapshots: Vec<(String, Vec<u8>)>,
}

/// The sending side, cloned into every receiver.
#[derive(Clone)]
pub struct SpanQueue {
    sender: SyncSender<Batch>,
    depth: Arc<AtomicUsize>,
}

/// The engine's side.
pub struct SpanReceiver {
    receiver: mpsc::Receiver<Batch>,
    depth: Arc<AtomicUsize>,
}

/// A queue of at most `capacity` span batches.
pub fn span_queue(capacity: usize) -> (SpanQueue, SpanReceiver) {
    let (sender, receiver) = mpsc::sync_channel(capacity);
    let depth = Arc::new(AtomicUsize::new(0));
    (SpanQueue { sender, depth: depth.clone() }, SpanReceiver { receiver, depth })
}

impl SpanQueue {
    /// Enqueues a batch without waiting; `Err(QueueFull)` when the engine is behind (or gone).
    pub fn try_send(&self, spans: Vec<Span>) -> Result<(), QueueFull> {
        if spans.is_empty() {
            return Ok(());
        }
        self.depth.fetch_add(1, Ordering::Relaxed);
        match self.sender.try_send(Batch { spans, ..Batch::default() }) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.depth.fetch_sub(1, Ordering::Relaxed);
                Err(QueueFull)
            }
        }
    }

    /// Enqueues a batch, waiting for room (replay and Kafka input: back-pressure, not refusal).
    pub fn send_blocking(&self, spans: Vec<Span>) -> Result<(), QueueFull> {
        self.send_batch(Batch { spans, ..Batch::default() })
    }

    /// Enqueues a batch with its source position, waiting for room. Sent even when it has no
    /// spans (a malformed message), so its offset is committed in order.
    pub fn send_batch(&self, batch: Batch) -> Result<(), QueueFull> {
        self.depth.fetch_add(1, Ordering::Relaxed);
        self.sender.send(batch).map_err(|_| {
            self.depth.fetch_sub(1, Ordering::Relaxed);
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
                self.depth.fetch_sub(1, Ordering::Relaxed);
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

    /// A batch if one is waiting right now.
    pub fn try_recv(&self) -> Option<Batch> {
        let batch = self.receiver.try_recv().ok()?;
        self.depth.fetch_sub(1, Ordering::Relaxed);
        Some(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_follows_sends_and_receives() {
        let (queue, receiver) = span_queue(2);
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
}
