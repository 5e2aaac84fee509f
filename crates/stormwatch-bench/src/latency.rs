//! Alert latency at 70% of the engine's measured gRPC throughput.

use crate::human;
use crate::polling::Pollers;
use crate::process::{metric, serve_args, spawn_listening, Listeners};
use crate::runs::{Extras, Setup};
use crate::send::{send, EXPORTER_BACKOFF};
use crate::traffic::{generate, spans_sent, Batch};
use anyhow::{bail, Context};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use stormwatch_loadgen::{Change, Scenario};
use tokio_util::sync::CancellationToken;

/// The latency phase's attack, added to the default scenario (its own changes are dropped).
/// It starts after [`warm_up`]: an attack that is there before the baselines judging it
/// have their learning minimum is held back, not alerted.
pub(crate) const LATENCY_ATTACK: &str = r#"
name = "bench-n-plus-one"
kind = "n_plus_one"
start = "3s"
end = "1h"
entry = "bff GET /feed"
call = "feed-score"
count = "300"
share = 0.02
detect_as = ["n_plus_one"]
"#;

/// Alert latency at `rate` spans/s: event time at wall-clock speed, an N+1 attack in a small
/// share of requests, every alert emitted (no throttling); with what `run` adds.
pub(crate) async fn latency(
    setup: &Setup,
    rate: f64,
    seconds: u64,
    batch_spans: usize,
    run: &Extras,
) -> anyhow::Result<()> {
    let scenario = latency_scenario(rate, seconds, batch_spans)?;
    eprintln!(
        "bench: latency at {} spans/s for {} s ({} s of warm-up) ...",
        human(rate),
        scenario.duration.as_secs(),
        scenario.changes[0].start.as_secs()
    );
    let traffic = tokio::task::spawn_blocking({
        let scenario = scenario.clone();
        move || generate(&scenario, u64::MAX, batch_spans)
    })
    .await?;
    // Every alert emitted (no folding of repeats), and room for rate x (trace_idle + trace
    // duration) spans in flight, as a deployment at this rate would configure it.
    let in_flight = ((rate * 12.0) as u64).max(6_000_000);
    // No periodic snapshot during the run (a loaded store's would take the engine thread for
    // seconds).
    let config = format!(
        "[output]\nstdout = false\n\n[detect]\nthrottle = \"0s\"\n\n[assemble]\nmax_in_flight_spans = {in_flight}\n\n\
         [baseline]\nsnapshot_interval = \"1h\"\n"
    );
    let (name, models) = run.prepare(setup, "latency")?;
    let alerts_file = setup.dir.join(format!("{name}-alerts.jsonl"));
    let alerts = alerts_file.display().to_string();
    let args_for = |l: &Listeners| serve_args(&setup.dir, &name, &config, l, &["--alerts-file", &alerts]);
    let (mut target, listeners) = spawn_listening("engine", &setup.dir, args_for, |l| vec![l.grpc, l.admin]).await?;
    run.open_dashboards(&mut target, listeners.admin).await?;
    // Start when the traffic's event time begins.
    let start_at = UNIX_EPOCH + Duration::from_secs(scenario.start_unix_seconds);
    if let Ok(wait) = start_at.duration_since(SystemTime::now()) {
        tokio::time::sleep(wait).await;
    }
    let batches: Arc<Vec<Batch>> = Arc::new(traffic.batches);
    let acked: Arc<Vec<AtomicU64>> = Arc::new((0..batches.len()).map(|_| AtomicU64::new(0)).collect());
    let stop = CancellationToken::new();
    let watcher = tokio::spawn(watch_alerts(alerts_file.clone(), traffic.attacked.clone(), stop.clone()));
    let endpoint = format!("grpc://{}", listeners.grpc);
    let pollers = run.pollers.then(|| Pollers::start(listeners.admin));
    let sent = send(&endpoint, batches.clone(), setup.connections, Some(rate), acked.clone(), EXPORTER_BACKOFF).await;
    let (started, retries) = match sent {
        Ok(sent) => (sent.started, sent.refused_exports),
        Err(error) => return Err(target.failure(&format!("{error:#}"))),
    };
    let sending = started.elapsed().as_secs_f64();
    // Wait on the engine, not the clock (a busy machine may leave it behind the stream): every
    // span processed, then every trace completed (after assemble.trace_idle, 5 s, of quiet)
    // and a second for their alerts to be written.
    let deadline = Instant::now() + Duration::from_secs(600);
    let admin = listeners.admin;
    while metric(admin, "stormwatch_spans_processed_total").await.unwrap_or(0.0) < spans_sent(&batches) as f64
        || metric(admin, "stormwatch_in_flight_traces").await.unwrap_or(1.0) > 0.0
    {
        if Instant::now() >= deadline {
            return Err(target.failure("the engine did not process and complete every trace within 10 minutes"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.cancel();
    let seen = watcher.await?;
    let polled = match pollers {
        Some(pollers) => Some(pollers.finish().await),
        None => None,
    };
    target.stop();
    let _ = std::fs::remove_dir_all(&models);
    let achieved = spans_sent(&batches) as f64 / sending.max(1e-9);
    report(setup, &traffic.attacked, &acked, &seen, started, (rate, achieved, retries), run)?;
    if let Some(polled) = polled {
        println!(
            "  the pollers: {} reads answered ({} failed), p50 {:.1} ms, p99 {:.1} ms",
            polled.answered, polled.failed, polled.p50_ms, polled.p99_ms
        );
    }
    Ok(())
}

/// The warm-up before the latency attack at `entry_rate` requests a second of the attacked
/// entry: long enough for it to have twice the learning minimum of requests, and 3 s at least.
/// Counted in requests, not seconds: a busy machine measures a lower throughput, the run is
/// offered less traffic, and a fixed warm-up would end before the baselines could judge.
pub(crate) fn warm_up(entry_rate: f64) -> Duration {
    let requests = 2.0 * stormwatch_detect::DetectConfig::default().learning_min_samples as f64;
    Duration::from_secs_f64((requests / entry_rate.max(1e-9)).clamp(3.0, 600.0))
}

/// The default scenario at `rate` spans/s: a [`warm_up`], then `seconds` with the latency
/// attack in about 20 requests a second (2% of the entry's at least, a fifth at most), from
/// two seconds from now.
fn latency_scenario(rate: f64, seconds: u64, batch_spans: usize) -> anyhow::Result<Scenario> {
    let mut scenario =
        Scenario::parse(stormwatch_loadgen::shipped::LARGE_GENERATED).map_err(|e| anyhow::anyhow!("scenario: {e}"))?;
    let probe = generate(&scenario, 50_000, batch_spans);
    let spans_per_request = probe.spans as f64 / probe.traces as f64;
    let mut attack = toml::from_str::<Change>(LATENCY_ATTACK).context("the latency attack")?;
    scenario.rate = rate / spans_per_request;
    let total_weight: f64 = scenario.entries.iter().map(|e| e.weight).sum();
    let entry_weight: f64 = scenario.entries.iter().filter(|e| e.service == "bff").map(|e| e.weight).sum();
    let entry_rate = scenario.rate * entry_weight / total_weight.max(1e-9);
    attack.share = (20.0 / entry_rate.max(1e-9)).clamp(0.02, 0.2);
    let warm_up = warm_up(entry_rate);
    attack.start = warm_up;
    scenario.changes = vec![attack];
    scenario.duration = warm_up + Duration::from_secs(seconds);
    scenario.start_unix_seconds = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + 2;
    Ok(scenario)
}

/// The latency quantiles of the attacked requests' alerts, from the acknowledgement of the
/// export that carried each one's last span. Traces sent in the last trace_idle (+1 s) of the
/// stream complete only through the quiet-stream fallback after it ends: steady state is the
/// traces before them.
fn report(
    setup: &Setup,
    attacked: &HashMap<String, usize>,
    acked: &[AtomicU64],
    seen: &[(String, Instant)],
    started: Instant,
    (rate, achieved, retries): (f64, f64, u64),
    run: &Extras,
) -> anyhow::Result<()> {
    let last_ack = acked.iter().map(|a| a.load(Ordering::Relaxed)).max().unwrap_or(0);
    let cutoff = last_ack.saturating_sub(6_000_000_000);
    let steady =
        |batch: usize| acked.get(batch).map(|a| a.load(Ordering::Relaxed)).filter(|at| *at > 0 && *at <= cutoff);
    let attacked_steady = attacked.values().filter(|batch| steady(**batch).is_some()).count();
    let mut latencies: Vec<f64> = seen
        .iter()
        .filter_map(|(trace, at)| {
            let acked_at = steady(*attacked.get(trace)?)?;
            Some(at.saturating_duration_since(started + Duration::from_nanos(acked_at)).as_secs_f64())
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    let quantile = |q: f64| latencies.get(((latencies.len() as f64 * q).ceil() as usize).saturating_sub(1)).copied();
    println!(
        "alert latency at 70% of the engine's gRPC throughput ({} spans/s offered, {} achieved, {} retried exports{}): \
         {} of {} attacked requests alerted (those sent before the last 6 s of the stream)",
        human(rate),
        human(achieved),
        retries,
        run.described(),
        latencies.len(),
        attacked_steady
    );
    match (quantile(0.5), quantile(0.9), quantile(0.99), latencies.last()) {
        (Some(p50), Some(p90), Some(p99), Some(max)) => println!(
            "  last span acknowledged -> alert written: p50 {p50:.2} s, p90 {p90:.2} s, p99 {p99:.2} s, max {max:.2} s \
             (a trace completes after assemble.trace_idle = 5 s without new spans)"
        ),
        _ if attacked_steady == 0 => {
            bail!("no attacked request was sent before the last 6 s of the stream: run longer (--latency-seconds)")
        }
        _ => bail!("no alert arrived for the attacked requests; see the engine log in {}", setup.dir.display()),
    }
    Ok(())
}

/// Tails the alerts file until `stop`: (exemplar trace id, when its alert was seen) for every
/// alert naming an attacked trace.
pub(crate) async fn watch_alerts(
    file: PathBuf,
    attacked: HashMap<String, usize>,
    stop: CancellationToken,
) -> Vec<(String, Instant)> {
    let mut seen: Vec<(String, Instant)> = Vec::new();
    let mut known = std::collections::HashSet::new();
    let (mut offset, mut pending) = (0usize, String::new());
    while !stop.is_cancelled() {
        if let Ok(text) = std::fs::read(&file) {
            if text.len() > offset {
                let now = Instant::now();
                pending.push_str(&String::from_utf8_lossy(&text[offset..]));
                offset = text.len();
                while let Some(end) = pending.find('\n') {
                    let line: String = pending.drain(..=end).collect();
                    let Ok(alert) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
                    for id in alert["exemplar_trace_ids"].as_array().into_iter().flatten().filter_map(|id| id.as_str())
                    {
                        if attacked.contains_key(id) && known.insert(id.to_string()) {
                            seen.push((id.to_string(), now));
                        }
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    seen
}
