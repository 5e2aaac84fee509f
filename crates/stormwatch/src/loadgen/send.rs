//! `loadgen --send`: a generator thread encodes export batches ahead of time; connection tasks
//! send them at the target rate and report the achieved rate every second.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use prost::Message;
use stormwatch_io::otlp::client::{Export, OtlpClient};
use stormwatch_loadgen::{Generator, Labels, Scenario};
use stormwatch_otlp::collector::ExportTraceServiceRequest;
use tokio::sync::{mpsc, Mutex};

use crate::{LoadgenArgs, RateUnit};

#[derive(Default)]
struct Counters {
    spans: AtomicU64,
    /// Export requests sent.
    requests: AtomicU64,
    /// Generated (root) requests scheduled.
    traces: AtomicU64,
    retries: AtomicU64,
}

pub(super) async fn run(args: LoadgenArgs, endpoint: String) -> anyhow::Result<()> {
    anyhow::ensure!(args.rate >= 0.0, "--rate must be zero (unlimited) or positive");
    anyhow::ensure!(args.connections >= 1, "--connections must be at least 1");
    let scenario = Scenario::from_file(&args.scenario)?;
    // Fail on a wrong address before generating anything.
    let mut clients = Vec::new();
    for _ in 0..args.connections {
        clients.push(OtlpClient::connect(&endpoint).await?);
    }
    let (batches_tx, batches_rx) = mpsc::channel::<Batch>(256);
    let batch_spans = args.batch_spans.max(1);
    let producer = std::thread::Builder::new()
        .name("loadgen-encode".into())
        .spawn(move || encode_batches(&scenario, batch_spans, &batches_tx))?;
    let counters = Arc::new(Counters::default());
    let started = Instant::now();
    let batches = Arc::new(Mutex::new(batches_rx));
    let mut senders = tokio::task::JoinSet::new();
    for client in clients {
        let pace = Pace { started, rate: args.rate, unit: args.rate_unit };
        senders.spawn(send_batches(client, batches.clone(), counters.clone(), pace));
    }
    let display = tokio::spawn(display_rate(counters.clone(), args.quiet, args.rate, args.rate_unit));
    let mut failure = None;
    while let Some(result) = senders.join_next().await {
        if let Err(error) = result.context("a sender task panicked").and_then(|r| r) {
            failure.get_or_insert(error);
            senders.abort_all();
        }
    }
    display.abort();
    if let Some(error) = failure {
        return Err(error.context(format!("sending to {endpoint}")));
    }
    let labels = tokio::task::spawn_blocking(move || producer.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the generator thread panicked"))?;
    let elapsed = started.elapsed().as_secs_f64();
    let spans = counters.spans.load(Ordering::Relaxed);
    if !args.quiet {
        eprintln!(
            "\nloadgen: sent {spans} spans in {} exports to {endpoint} in {elapsed:.1} s ({:.0} spans/s), {} retried",
            counters.requests.load(Ordering::Relaxed),
            spans as f64 / elapsed.max(1e-9),
            counters.retries.load(Ordering::Relaxed)
        );
    }
    if let Some(path) = &args.labels {
        std::fs::write(path, serde_json::to_string_pretty(&labels)?)
            .with_context(|| format!("cannot write labels to {}", path.display()))?;
    }
    Ok(())
}

/// One encoded export request: (body, spans, generated requests).
type Batch = (Bytes, u64, u64);

/// The generator thread: the scenario's traces in export requests of about `batch_spans`
/// spans, until the senders stop taking them; returns the labels.
fn encode_batches(scenario: &Scenario, batch_spans: usize, batches: &mpsc::Sender<Batch>) -> Labels {
    let mut generator = Generator::new(scenario);
    let mut batch = ExportTraceServiceRequest::default();
    let (mut spans, mut requests) = (0usize, 0u64);
    for trace in generator.by_ref() {
        spans += trace.spans;
        requests += 1;
        batch.resource_spans.extend(trace.request.resource_spans);
        if spans >= batch_spans {
            let bytes = Bytes::from(std::mem::take(&mut batch).encode_to_vec());
            if batches.blocking_send((bytes, spans as u64, requests)).is_err() {
                break;
            }
            (spans, requests) = (0, 0);
        }
    }
    if spans > 0 {
        let _ = batches.blocking_send((Bytes::from(batch.encode_to_vec()), spans as u64, requests));
    }
    generator.into_labels()
}

/// The target rate, across all connections, from `started`.
#[derive(Clone, Copy)]
struct Pace {
    started: Instant,
    rate: f64,
    unit: RateUnit,
}

/// One connection: takes batches and sends each when the pace says it is due, retrying what
/// the receiver asks to retry with backoff.
async fn send_batches(
    mut client: OtlpClient,
    batches: Arc<Mutex<mpsc::Receiver<Batch>>>,
    counters: Arc<Counters>,
    pace: Pace,
) -> anyhow::Result<()> {
    loop {
        let Some((body, spans, traces)) = batches.lock().await.recv().await else {
            return Ok(());
        };
        // Pace on what was scheduled so far, across all connections.
        let spans_scheduled = counters.spans.fetch_add(spans, Ordering::Relaxed) + spans;
        let traces_scheduled = counters.traces.fetch_add(traces, Ordering::Relaxed) + traces;
        let scheduled = match pace.unit {
            RateUnit::Spans => spans_scheduled,
            RateUnit::Requests => traces_scheduled,
        };
        if pace.rate > 0.0 {
            let due = pace.started + Duration::from_secs_f64(scheduled as f64 / pace.rate);
            tokio::time::sleep_until(due.into()).await;
        }
        let mut backoff = Duration::from_millis(50);
        loop {
            match client.export(body.clone()).await? {
                Export::Accepted => break,
                Export::RetryLater(pause) => {
                    counters.retries.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(pause.max(backoff)).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
        counters.requests.fetch_add(1, Ordering::Relaxed);
    }
}

/// The achieved rate every second: in place on a terminal, a line each otherwise.
async fn display_rate(counters: Arc<Counters>, quiet: bool, target: f64, unit: RateUnit) {
    let terminal = std::io::stderr().is_terminal();
    let mut last = (Instant::now(), 0u64);
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let spans = counters.spans.load(Ordering::Relaxed);
        let rate = (spans - last.1) as f64 / last.0.elapsed().as_secs_f64();
        last = (Instant::now(), spans);
        if quiet {
            continue;
        }
        let target = match (target > 0.0, unit) {
            (false, _) => "unlimited".to_string(),
            (true, RateUnit::Spans) => format!("{target:.0} spans/s"),
            (true, RateUnit::Requests) => format!("{target:.0} requests/s"),
        };
        let line = format!(
            "loadgen: {rate:>9.0} spans/s (target {target}), {spans} spans in {} exports, {} retried",
            counters.requests.load(Ordering::Relaxed),
            counters.retries.load(Ordering::Relaxed)
        );
        if terminal {
            eprint!("\r{line}   ");
        } else {
            eprintln!("{line}");
        }
    }
}
