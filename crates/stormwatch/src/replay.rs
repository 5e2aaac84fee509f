//! `stormwatch replay FILE...`: recorded OTLP through the same engine as `serve`, on event
//! time, as fast as the machine allows. A decode thread reads the files in order and feeds
//! the engine thread through the bounded queue (blocking, not refusing, when it is full).

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use stormwatch_baseline::BaselineStore;
use stormwatch_io::files::{self, FileError};
use stormwatch_io::{Metrics, SpanQueue};
use stormwatch_model::AlertKind;

use crate::ReplayArgs;
use stormwatch_engine::{open_sink, restore, EngineOptions, EngineReport, Pipeline};

struct Progress {
    bytes: AtomicU64,
    spans: AtomicU64,
    rejected: AtomicU64,
    done: AtomicBool,
}

pub(crate) async fn run(args: ReplayArgs) -> anyhow::Result<()> {
    let config = crate::serve::load_config(&args.common)?;
    config.validate()?;
    config.limits.apply();
    config.attribution.apply()?;
    stormwatch_io::kafka::set_client_settings(config.kafka.client.clone().into_iter().collect());
    // Open every file first: a typo in the last name fails before minutes of work.
    let readers = args.files.iter().map(|path| files::open(path)).collect::<Result<Vec<_>, _>>()?;
    let total_bytes: u64 = readers.iter().map(|r| r.size()).sum();
    let store = match &args.models {
        Some(dir) => restore(dir, config.baseline.max_keys)?,
        None => BaselineStore::new(config.baseline.max_keys),
    };
    let sink =
        open_sink(&config.kafka.brokers, &config.kafka.alert_topic, !args.no_stdout, args.alerts_file.as_deref())
            .await?;

    let started = Instant::now();
    let tuning_path = args
        .tuning
        .clone()
        .or_else(|| args.models.as_ref().map(|dir| dir.join(stormwatch_engine::tuning::TUNING_FILE)));
    let tuning = match &tuning_path {
        Some(path) => stormwatch_engine::tuning::load(path)?.unwrap_or_default(),
        None => Default::default(),
    };
    let (pipeline, queue) = Pipeline::start(
        config.engine(),
        store,
        sink,
        // Replay waits for room: only the batch bound applies.
        (64, usize::MAX),
        EngineOptions {
            snapshot: args.models.clone().map(|dir| (dir, None)),
            tuning: stormwatch_engine::TuningOptions { initial: tuning, ..Default::default() },
            ..EngineOptions::default()
        },
    );
    let metrics = pipeline.metrics.clone();

    let progress = Arc::new(Progress {
        bytes: AtomicU64::new(0),
        spans: AtomicU64::new(0),
        rejected: AtomicU64::new(0),
        done: AtomicBool::new(false),
    });
    let file_count = readers.len();
    let reader = spawn_decoder(readers, queue, progress.clone())?;
    report_progress(&progress, total_bytes, args.quiet).await;
    let read_result = tokio::task::spawn_blocking(move || reader.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the decode thread panicked"))?;
    let report = pipeline.finish(None).await?;

    if !args.quiet {
        summarise(&report, &progress, file_count, started.elapsed().as_secs_f64().max(1e-9));
    }
    if let Some(error) = report.snapshot_error {
        anyhow::bail!("the baseline snapshot was not written: {error}");
    }
    read_result.context("replay stopped early; alerts above cover the data read before the error")?;
    if Metrics::get(&metrics.alert_delivery_failures_total) > 0 {
        anyhow::bail!("{} alerts could not be delivered", Metrics::get(&metrics.alert_delivery_failures_total));
    }
    Ok(())
}

/// The decode thread: reads the files in order into the queue (waiting for room), counting as
/// it goes; it stops early when the engine stopped.
fn spawn_decoder(
    readers: Vec<files::OtlpFileReader>,
    queue: SpanQueue,
    progress: Arc<Progress>,
) -> std::io::Result<std::thread::JoinHandle<Result<(), FileError>>> {
    std::thread::Builder::new().name("stormwatch-decode".into()).spawn(move || {
        let result = (|| {
            let mut finished_bytes = 0;
            for mut file in readers {
                while let Some(decoded) = file.next() {
                    let decoded = decoded?;
                    progress.spans.fetch_add(decoded.spans.len() as u64, Ordering::Relaxed);
                    progress.rejected.fetch_add(decoded.rejected_spans, Ordering::Relaxed);
                    progress.bytes.store(finished_bytes + file.position(), Ordering::Relaxed);
                    if queue.send_blocking(decoded.spans).is_err() {
                        return Ok(()); // the engine stopped; its report says why
                    }
                }
                finished_bytes += file.size();
            }
            Ok(())
        })();
        progress.done.store(true, Ordering::Relaxed);
        result
    })
}

/// The one-line summary of a replay.
fn summarise(report: &EngineReport, progress: &Progress, file_count: usize, elapsed: f64) {
    let spans = progress.spans.load(Ordering::Relaxed);
    let by_kind: Vec<String> = AlertKind::ALL
        .iter()
        .zip(report.stats.alerts)
        .filter(|(_, count)| *count > 0)
        .map(|(kind, count)| format!("{} {count}", kind.as_str()))
        .collect();
    let alerts: u64 = report.stats.alerts.iter().sum();
    eprintln!(
        "replayed {spans} spans in {} traces from {file_count} file(s) in {elapsed:.2} s ({:.0} spans/s); \
         alerts: {alerts}{}; rejected spans {}, late spans {}, evicted traces {}",
        report.stats.traces_checked,
        spans as f64 / elapsed,
        if by_kind.is_empty() { String::new() } else { format!(" ({})", by_kind.join(", ")) },
        progress.rejected.load(Ordering::Relaxed),
        report.late_spans,
        report.traces_evicted,
    );
}

/// A progress bar on a terminal; a line every five seconds otherwise.
async fn report_progress(progress: &Progress, total_bytes: u64, quiet: bool) {
    let started = Instant::now();
    let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
        let bar = indicatif::ProgressBar::new(total_bytes);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    let mut last_line = Instant::now();
    while !progress.done.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let spans = progress.spans.load(Ordering::Relaxed);
        let rate = spans as f64 / started.elapsed().as_secs_f64().max(1e-9);
        if let Some(bar) = &bar {
            bar.set_position(progress.bytes.load(Ordering::Relaxed));
            bar.set_message(format!("{spans} spans ({rate:.0}/s)"));
        } else if !quiet && last_line.elapsed() >= Duration::from_secs(5) {
            let percent = 100.0 * progress.bytes.load(Ordering::Relaxed) as f64 / total_bytes.max(1) as f64;
            eprintln!("replay: {percent:.0}% read, {spans} spans ({rate:.0}/s)");
            last_line = Instant::now();
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
}
