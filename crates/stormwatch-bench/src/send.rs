//! Sending the pre-encoded export requests over OTLP/gRPC or OTLP/HTTP on several connections.

use crate::traffic::Batch;
use anyhow::Context;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use stormwatch_io::otlp::client::{Export, OtlpClient};

/// How a well-behaved exporter backs off a refusal: 10 ms, doubling to 500 ms.
pub(crate) const EXPORTER_BACKOFF: (Duration, Duration) = (Duration::from_millis(10), Duration::from_millis(500));

/// What a send achieved.
pub(crate) struct Sent {
    pub(crate) started: Instant,
    pub(crate) refused_exports: u64,
    /// Spans in the refused exports (each refusal counts its spans again).
    pub(crate) refused_spans: u64,
}

/// Sends every batch over `connections` connections, paced at `rate` spans/s when given,
/// retrying refused exports after a backoff from `first` doubling to `most`; records when each
/// batch was acknowledged (nanoseconds since `started`) in `acked`.
pub(crate) async fn send(
    endpoint: &str,
    batches: Arc<Vec<Batch>>,
    connections: usize,
    rate: Option<f64>,
    acked: Arc<Vec<AtomicU64>>,
    (first, most): (Duration, Duration),
) -> anyhow::Result<Sent> {
    let mut clients = Vec::new();
    for _ in 0..connections {
        clients.push(OtlpClient::connect(endpoint).await?);
    }
    let next = Arc::new(AtomicUsize::new(0));
    let retries = Arc::new(AtomicU64::new(0));
    let refused_spans = Arc::new(AtomicU64::new(0));
    let sent_spans = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for mut client in clients {
        let (batches, next, retries, refused_spans, sent_spans, acked) =
            (batches.clone(), next.clone(), retries.clone(), refused_spans.clone(), sent_spans.clone(), acked.clone());
        tasks.spawn(async move {
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let Some(batch) = batches.get(index) else { return Ok::<_, anyhow::Error>(()) };
                if let Some(rate) = rate {
                    let scheduled = sent_spans.fetch_add(batch.spans, Ordering::Relaxed) + batch.spans;
                    tokio::time::sleep_until((started + Duration::from_secs_f64(scheduled as f64 / rate)).into()).await;
                }
                let mut backoff = first;
                loop {
                    match client.export(batch.body.clone()).await? {
                        Export::Accepted => break,
                        Export::RetryLater(_) => {
                            retries.fetch_add(1, Ordering::Relaxed);
                            refused_spans.fetch_add(batch.spans, Ordering::Relaxed);
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(most);
                        }
                    }
                }
                if let Some(slot) = acked.get(index) {
                    slot.store(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
                }
            }
        });
    }
    while let Some(result) = tasks.join_next().await {
        result.context("a sender panicked")??;
    }
    Ok(Sent {
        started,
        refused_exports: retries.load(Ordering::Relaxed),
        refused_spans: refused_spans.load(Ordering::Relaxed),
    })
}
