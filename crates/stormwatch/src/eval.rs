//! `stormwatch eval SCENARIO`: generate the scenario's traffic, run it through the engine in
//! process, score the alerts against the labels, print the table, draw the picture.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::Context;
use prost::Message;
use stormwatch_baseline::BaselineStore;
use stormwatch_detect::Engine;
use stormwatch_loadgen::{eval, svg, Generator, Labels, Scenario};
use stormwatch_model::{wall_clock_nanos, Alert, AlertKind};

use crate::EvalArgs;
use stormwatch_engine::config::Config;

pub(crate) fn run(args: EvalArgs) -> anyhow::Result<()> {
    let scenario = Scenario::from_file(&args.scenario)?;
    let mut engine = engine_for(&scenario, &args)?;
    let started = Instant::now();
    let mut generator = Generator::new(&scenario);
    let (alerts, spans) = replay(&mut engine, &mut generator, &scenario, args.quiet)?;
    let requests = generator.requests();
    let labels = generator.into_labels();
    let report = eval::score(&labels, &scenario.eval, &alerts, requests, spans);
    print_and_draw(&report, &labels, &scenario, &args)?;
    if let Some(path) = &args.alerts {
        let mut file = std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("cannot write alerts to {}", path.display()))?,
        );
        for alert in &alerts {
            writeln!(file, "{}", alert.to_json())?;
        }
        file.flush()?;
    }
    if let Some(path) = &args.labels {
        std::fs::write(path, serde_json::to_string_pretty(&labels)?)
            .with_context(|| format!("cannot write labels to {}", path.display()))?;
    }
    if !args.quiet {
        summarise(&engine, &args, spans, started.elapsed().as_secs_f64());
    }
    let failures = report.failures();
    anyhow::ensure!(failures.is_empty(), "scenario {}: {} expectation(s) not met", scenario.name, failures.len());
    Ok(())
}

/// An engine with the scenario's `[eval]` settings and the `--tuning` file.
fn engine_for(scenario: &Scenario, args: &EvalArgs) -> anyhow::Result<Engine> {
    let mut config = Config::default();
    config.baseline.learning_min_samples = scenario.eval.learning_min_samples;
    config.assemble.trace_idle = scenario.eval.trace_idle;
    config.detect.window = scenario.eval.window;
    config.assemble.trace_max_wait = config.assemble.trace_max_wait.max(scenario.eval.trace_idle);
    config.validate().context("the scenario's [eval] settings")?;
    config.limits.apply();
    config.attribution.apply()?;
    let mut engine = Engine::new(config.engine(), BaselineStore::new(config.baseline.max_keys), wall_clock_nanos);
    if let Some(path) = &args.tuning {
        let tuning = stormwatch_engine::tuning::load(path)?
            .with_context(|| format!("--tuning {}: no such file", path.display()))?;
        if !args.quiet {
            eprintln!("eval: tuning {}: {}", path.display(), stormwatch_engine::tuning::describe(&tuning));
        }
        engine.set_tuning(tuning);
    }
    Ok(engine)
}

/// The scenario's traffic through the engine, each request through the protobuf wire format and
/// the real decoder (as replay and serve see it): the alerts, and how many spans.
fn replay(
    engine: &mut Engine,
    generator: &mut Generator<'_>,
    scenario: &Scenario,
    quiet: bool,
) -> anyhow::Result<(Vec<Alert>, u64)> {
    let mut last_progress = Instant::now();
    let (mut alerts, mut spans, mut buffer) = (Vec::new(), 0u64, Vec::new());
    for trace in generator.by_ref() {
        buffer.clear();
        trace.request.encode(&mut buffer).context("encoding a generated request")?;
        let decoded = stormwatch_otlp::decode_protobuf(&buffer).context("decoding a generated request")?;
        anyhow::ensure!(decoded.rejected_spans == 0, "generated spans were rejected: {}", decoded.rejection_message());
        spans += decoded.spans.len() as u64;
        engine.push(decoded.spans, &mut alerts);
        if !quiet && last_progress.elapsed() >= Duration::from_secs(5) {
            let done = (trace.start_unix_nano - scenario.start_unix_seconds * 1_000_000_000) as f64
                / scenario.duration.as_nanos() as f64;
            eprintln!("eval: {:.0}% of event time, {spans} spans, {} alerts", done * 100.0, alerts.len());
            last_progress = Instant::now();
        }
    }
    engine.flush(&mut alerts);
    Ok((alerts, spans))
}

/// The table to stdout (a closed pipe, as with `| head`, is not an error) and the picture.
fn print_and_draw(report: &eval::Report, labels: &Labels, scenario: &Scenario, args: &EvalArgs) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    let printed = write!(stdout, "{}", report.render());
    let mut kinds: Vec<&str> = AlertKind::ALL.iter().map(|k| k.as_str()).collect();
    for change in &labels.changes {
        for kind in &change.detect_as {
            if !kinds.contains(&kind.as_str()) {
                kinds.push(kind);
            }
        }
    }
    let picture = args.picture.clone().unwrap_or_else(|| format!("{}.eval.svg", scenario.name).into());
    std::fs::write(&picture, svg::render(report, &kinds))
        .with_context(|| format!("cannot write the picture to {}", picture.display()))?;
    let printed =
        printed.and_then(|()| writeln!(stdout, "picture: {}", picture.display())).and_then(|()| stdout.flush());
    match printed {
        Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => Err(error).context("writing the table"),
        _ => Ok(()),
    }
}

/// What the tuning did, and the speed.
fn summarise(engine: &Engine, args: &EvalArgs, spans: u64, elapsed: f64) {
    let stats = engine.stats();
    if args.tuning.is_some() {
        let shadowed: Vec<String> = AlertKind::ALL
            .iter()
            .zip(stats.shadowed)
            .filter(|(_, n)| *n > 0)
            .map(|(kind, n)| format!("{} {n}", kind.as_str()))
            .collect();
        eprintln!(
            "eval: the tuning suppressed {} findings; shadow mode judged {}",
            stats.suppressed,
            if shadowed.is_empty() { "none".to_string() } else { shadowed.join(", ") }
        );
    }
    eprintln!("eval: {spans} spans in {elapsed:.1} s ({:.0} spans/s)", spans as f64 / elapsed.max(1e-9));
}
