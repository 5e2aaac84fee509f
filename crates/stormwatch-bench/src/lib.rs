//! `stormwatch bench`: end-to-end throughput of the engine as a ratio to a decode-and-drop
//! reference measured in the same run, on the same pre-encoded loadgen traffic.
//!
//! Every target runs as a child process of this binary, so its CPU time and peak memory are
//! its own (read from `/proc`): `bench-reference` (tonic + prost `TraceService` and an axum
//! `POST /v1/traces` that decode each request and drop it, on the same runtime settings as
//! the engine), and `serve` with a throwaway models directory and alerts file. The bench
//! process only sends: batches are encoded before the clock starts. For each transport
//! (OTLP/gRPC, OTLP/HTTP, and a replay from a file) and each run, the reference and the
//! engine take turns; an engine run ends when its `stormwatch_spans_processed_total` reaches
//! what was sent. Medians over the runs are reported.
//!
//! Then, in fresh child processes: bytes per in-flight span and per tracked edge
//! (`bench-memory`), and alert latency at 70% of the engine's measured gRPC throughput: the
//! traffic's event time runs at wall-clock speed, a small share of requests carry an N+1
//! attack, and the latency of each is from the acknowledgement of the export that carried its
//! last span to its alert appearing in the engine's alerts file.
//!
//! With `--kafka HOST:PORT`: the traffic in a new 4-partition topic, consumed by one engine,
//! then by two in one group (static ids), clocked from the first message consumed to the
//! last span processed.

#![warn(missing_docs)]

mod args;
mod latency;
mod memory;
mod overload;
mod polling;
mod process;
mod reference;
mod runs;
mod send;
mod traffic;

use crate::latency::latency;
use crate::memory::memory_report;
use crate::overload::overload;
use crate::polling::admin_polling;
use crate::process::{machine, tempfile_dir, ticks_per_second};
use crate::runs::{median, run_file, run_kafka, run_server, Extras, Measure, Setup};
use crate::traffic::{generate, write_binpb, Batch, Traffic};
use anyhow::Context;
use std::sync::Arc;
use std::time::Duration;
use stormwatch_loadgen::Scenario;

pub use args::{BenchArgs, BenchTransport, MemoryArgs, ReferenceArgs};
pub use memory::memory_probe;
pub use reference::reference;

fn human(value: f64) -> String {
    let digits = format!("{:.0}", value);
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn mb(bytes: u64) -> String {
    format!("{:.0} MB", bytes as f64 / 1e6)
}

/// `stormwatch bench`.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    check(&args)?;
    let scenario = scenario_of(&args)?;
    let name = scenario.name.clone();
    let dir = tempfile_dir()?;
    let setup = Setup { dir: dir.clone(), ticks: ticks_per_second(), connections: args.connections, runs: args.runs };

    eprintln!(
        "bench: encoding {} spans of {name} in batches of {} spans ...",
        human(args.spans as f64),
        args.batch_spans
    );
    let scenario_for_generation = scenario.clone();
    let (spans_wanted, batch_spans) = (args.spans, args.batch_spans.max(1));
    let traffic =
        tokio::task::spawn_blocking(move || generate(&scenario_for_generation, spans_wanted, batch_spans)).await?;
    let spans = traffic.spans;
    println!(
        "stormwatch bench: {} spans of {name} ({:.1} spans per request, {:.0} bytes per span encoded), {} export requests of ~{} spans, {} connections, {} runs, medians",
        human(spans as f64),
        spans as f64 / traffic.traces as f64,
        traffic.bytes as f64 / spans as f64,
        human(traffic.batches.len() as f64),
        args.batch_spans,
        args.connections,
        args.runs
    );
    println!("machine: {}", machine());
    println!();
    println!(
        "{:<6} {:<10} {:>14} {:>12} {:>10} {:>18}",
        "input", "target", "spans/s", "CPU µs/span", "peak RSS", "engine/reference"
    );
    let file = dir.join("traffic.binpb");
    let batches =
        Arc::new(traffic.batches.iter().map(|b| Batch { body: b.body.clone(), spans: b.spans }).collect::<Vec<_>>());
    let mut engine_grpc = 0.0;
    for transport in &args.transport {
        let engine_rate = measure_transport(&setup, *transport, &traffic, &batches, &file).await?;
        if *transport == BenchTransport::Grpc {
            engine_grpc = engine_rate;
        }
    }
    let _ = std::fs::remove_file(&file);
    // Memory per in-flight span and per tracked edge, in a fresh process: reported below, and
    // the overload run's bound uses it.
    // Half the bench's spans buffered, and a tenth as many edges (at most 500,000 and 100,000).
    let report = memory_report((spans / 2).min(500_000), (spans / 10).min(100_000)).await?;
    if !args.no_overload {
        overload(&setup, &batches, spans, report.bytes_per_in_flight_span, report.bytes_per_edge).await?;
    }
    if let Some(brokers) = &args.kafka {
        measure_kafka(&setup, &batches, spans, brokers).await?;
    }
    if args.admin_polling {
        let latency_run = (args.latency_seconds > 0 && engine_grpc > 0.0).then_some((
            engine_grpc * 0.7,
            args.latency_seconds,
            args.batch_spans,
        ));
        admin_polling(&setup, &batches, spans, latency_run).await?;
    }
    drop(batches);
    drop(traffic);

    println!();
    println!(
        "memory: {:.0} bytes per in-flight span ({} spans buffered), {:.0} bytes per tracked edge with all its baselines ({} edges)",
        report.bytes_per_in_flight_span,
        human(report.in_flight_spans as f64),
        report.bytes_per_edge,
        human(report.edges as f64)
    );

    if args.latency_seconds > 0 && engine_grpc > 0.0 {
        latency(&setup, engine_grpc * 0.7, args.latency_seconds, args.batch_spans, &Extras::default()).await?;
    }

    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// The arguments' bounds, each named when broken.
fn check(args: &BenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.runs >= 1, "--runs must be at least 1");
    anyhow::ensure!(args.connections >= 1, "--connections must be at least 1");
    anyhow::ensure!(args.spans >= 10_000, "--spans must be at least 10000 for a meaningful figure");
    anyhow::ensure!(
        args.latency_seconds == 0 || args.latency_seconds >= 10,
        "--latency-seconds must be 0 (skip) or at least 10: traces of the last 6 s complete only after the stream \
         ends"
    );
    Ok(())
}

/// The scenario whose traffic is sent (`--scenario`, or the built-in large-generated one),
/// long enough to give the requested spans.
fn scenario_of(args: &BenchArgs) -> anyhow::Result<Scenario> {
    let text = match &args.scenario {
        Some(path) => {
            std::fs::read_to_string(path).with_context(|| format!("cannot read scenario {}", path.display()))?
        }
        None => stormwatch_loadgen::shipped::LARGE_GENERATED.to_string(),
    };
    let mut scenario = Scenario::parse(&text).map_err(|e| anyhow::anyhow!("scenario: {e}"))?;
    scenario.duration = scenario.duration.max(Duration::from_secs(24 * 3600));
    Ok(scenario)
}

/// The reference and the engine, taking turns over the runs on one transport; prints their
/// medians and returns the engine's throughput.
async fn measure_transport(
    setup: &Setup,
    transport: BenchTransport,
    traffic: &Traffic,
    batches: &Arc<Vec<Batch>>,
    file: &std::path::Path,
) -> anyhow::Result<f64> {
    let spans = traffic.spans;
    let mut reference = Vec::new();
    let mut engine = Vec::new();
    if transport == BenchTransport::File && !file.exists() {
        write_binpb(traffic, file)?;
    }
    for run in 0..setup.runs {
        eprintln!("bench: {} run {}/{} ...", transport.as_str(), run + 1, setup.runs);
        match transport {
            BenchTransport::File => {
                reference.push(run_file(setup, file, spans, false).await?);
                engine.push(run_file(setup, file, spans, true).await?);
            }
            _ => {
                reference.push(run_server(setup, batches, spans, transport, false, (run, &Extras::default())).await?);
                engine.push(run_server(setup, batches, spans, transport, true, (run, &Extras::default())).await?);
            }
        }
    }
    let summarise = |runs: &[Measure]| {
        let rate = median(&mut runs.iter().map(|m| m.spans_per_second).collect::<Vec<_>>());
        let cpu = median(&mut runs.iter().map(|m| m.cpu_micros_per_span).collect::<Vec<_>>());
        let rss = runs.iter().map(|m| m.peak_rss).max().unwrap_or(0);
        (rate, cpu, rss)
    };
    let (reference_rate, reference_cpu, reference_rss) = summarise(&reference);
    let (engine_rate, engine_cpu, engine_rss) = summarise(&engine);
    println!(
        "{:<6} {:<10} {:>14} {:>12.2} {:>10}",
        transport.as_str(),
        "reference",
        human(reference_rate),
        reference_cpu,
        mb(reference_rss)
    );
    println!(
        "{:<6} {:<10} {:>14} {:>12.2} {:>10} {:>18.2}",
        transport.as_str(),
        "engine",
        human(engine_rate),
        engine_cpu,
        mb(engine_rss),
        engine_rate / reference_rate.max(1e-9)
    );
    Ok(engine_rate)
}

/// The Kafka input runs, printed as ratios to one engine.
async fn measure_kafka(setup: &Setup, batches: &[Batch], spans: u64, brokers: &str) -> anyhow::Result<()> {
    eprintln!("bench: kafka: writing the traffic to a topic on {brokers} ...");
    let runs = run_kafka(setup, batches, spans, brokers).await?;
    let single = runs.first().map_or(0.0, |(_, m)| m.spans_per_second);
    for (engines, measure) in &runs {
        println!(
            "{:<6} {:<10} {:>14} {:>12.2} {:>10} {:>18}",
            "kafka",
            format!("engine x{engines}"),
            human(measure.spans_per_second),
            measure.cpu_micros_per_span,
            mb(measure.peak_rss),
            format!("{:.2} of x1", measure.spans_per_second / single.max(1e-9))
        );
    }
    Ok(())
}
