//! One measured run of a target: a server fed over the network, a replay of a file, or engines
//! consuming a Kafka topic.

use crate::human;
use crate::polling::{open_dashboards, Polled, Pollers, POLLED_EDGES, POLLERS};
use crate::process::{
    cpu_seconds, is_zombie, metric, serve_args, spawn_listening, status_bytes, thread_cpu_seconds, Listeners, Target,
};
use crate::send::{send, EXPORTER_BACKOFF};
use crate::traffic::Batch;
use crate::BenchTransport;
use bytes::Bytes;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The engine thread's name (`stormwatch-engine`'s `engine_loop::spawn`), whose CPU time is
/// measured apart: what admin reads would take from it.
const ENGINE_THREAD: &str = "stormwatch-engine";

/// One measured run of one target.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Measure {
    pub(crate) spans_per_second: f64,
    pub(crate) cpu_micros_per_span: f64,
    /// The engine thread's alone (engine runs over the network only; else 0).
    pub(crate) engine_thread_micros_per_span: f64,
    pub(crate) peak_rss: u64,
    /// Resident set when the traffic started (after the dashboards were opened, in a run with
    /// pollers).
    pub(crate) ready_rss: u64,
    /// What the admin API's pollers got, in a run with them.
    pub(crate) polled: Polled,
}

/// What an engine run has beyond the traffic: baselines it starts from, and clients polling
/// its admin API while it takes the traffic.
#[derive(Clone, Default)]
pub(crate) struct Extras {
    /// A snapshot document written to the run's models directory before the engine starts.
    pub(crate) snapshot: Option<Arc<Vec<u8>>>,
    /// Whether [`Pollers`] read the admin API during the run.
    pub(crate) pollers: bool,
}

pub(crate) fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

pub(crate) struct Setup {
    pub(crate) dir: PathBuf,
    pub(crate) ticks: f64,
    pub(crate) connections: usize,
    pub(crate) runs: usize,
}

impl Extras {
    /// The run's name, `base` with what it adds (its models directory is `models-<name>`), and
    /// that directory with the snapshot to start from written into it.
    pub(crate) fn prepare(&self, setup: &Setup, base: &str) -> anyhow::Result<(String, PathBuf)> {
        let name = match (&self.snapshot, self.pollers) {
            (None, false) => base.to_string(),
            (_, false) => format!("{base}-loaded"),
            (_, true) => format!("{base}-polled"),
        };
        let models = setup.dir.join(format!("models-{name}"));
        if let Some(document) = &self.snapshot {
            stormwatch_baseline::write_snapshot_document(&models, document)?;
        }
        Ok((name, models))
    }

    /// With pollers, their dashboards opened on `admin` (each read once) before the clock
    /// starts; a failure is the target's, with its log.
    pub(crate) async fn open_dashboards(&self, target: &mut Target, admin: SocketAddr) -> anyhow::Result<()> {
        if !self.pollers {
            return Ok(());
        }
        open_dashboards(admin).await.map_err(|error| target.failure(&format!("the admin API: {error:#}")))
    }

    /// What a report says of the run, after its rate.
    pub(crate) fn described(&self) -> String {
        let loaded = self.snapshot.as_ref().map(|_| format!(", {} edges tracked", human(POLLED_EDGES as f64)));
        let polled = self.pollers.then(|| format!(", {POLLERS} clients polling the admin API"));
        format!("{}{}", loaded.unwrap_or_default(), polled.unwrap_or_default())
    }
}

/// The reference or the engine, fed over `transport` until it has taken every span; the
/// engine with `extras`.
pub(crate) async fn run_server(
    setup: &Setup,
    traffic: &Arc<Vec<Batch>>,
    spans: u64,
    transport: BenchTransport,
    engine: bool,
    (run, extras): (usize, &Extras),
) -> anyhow::Result<Measure> {
    let alerts = setup.dir.join(format!("alerts-{run}.jsonl")).display().to_string();
    let (name, models) = extras.prepare(setup, &format!("engine-{run}"))?;
    let args_for = |listeners: &Listeners| {
        if engine {
            // No periodic snapshot during a run (a loaded store's would take the engine thread
            // for seconds, in one run and not the other).
            let config = "[output]\nstdout = false\n\n[baseline]\nsnapshot_interval = \"1h\"\n";
            serve_args(&setup.dir, &name, config, listeners, &["--alerts-file", &alerts])
        } else {
            Ok(vec![
                "bench-reference".to_string(),
                "--otlp-grpc".into(),
                listeners.grpc.to_string(),
                "--otlp-http".into(),
                listeners.http.to_string(),
            ])
        }
    };
    let wait_for = |l: &Listeners| {
        let served = if transport == BenchTransport::Http { l.http } else { l.grpc };
        if engine {
            vec![served, l.admin]
        } else {
            vec![served]
        }
    };
    let name = if engine { "engine" } else { "reference" };
    let (mut target, listeners) = spawn_listening(name, &setup.dir, args_for, wait_for).await?;
    let (grpc, http, admin) = (listeners.grpc, listeners.http, listeners.admin);
    let endpoint = match transport {
        BenchTransport::Grpc => format!("grpc://{grpc}"),
        BenchTransport::Http => format!("http://{http}"),
        BenchTransport::File => unreachable!("files are replayed, not sent"),
    };
    if engine {
        extras.open_dashboards(&mut target, admin).await?;
    }
    let pid = target.pid();
    let ready_rss = status_bytes(&pid.to_string(), "VmRSS:").unwrap_or(0);
    let cpu_before = cpu_seconds(pid, setup.ticks).unwrap_or(0.0);
    let engine_thread = || thread_cpu_seconds(pid, ENGINE_THREAD, setup.ticks).unwrap_or(0.0);
    let engine_thread_before = engine_thread();
    let acked = Arc::new(Vec::new());
    let pollers = (engine && extras.pollers).then(|| Pollers::start(admin));
    let started = match send(&endpoint, traffic.clone(), setup.connections, None, acked, EXPORTER_BACKOFF).await {
        Ok(sent) => sent.started,
        Err(error) => return Err(target.failure(&format!("{error:#}"))),
    };
    if engine {
        // Accepted is queued; done is processed.
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            if metric(admin, "stormwatch_spans_processed_total").await.unwrap_or(0.0) >= spans as f64 {
                break;
            }
            if Instant::now() > deadline || target.child.try_wait()?.is_some() {
                return Err(target.failure("did not process every span"));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid, setup.ticks).unwrap_or(0.0) - cpu_before;
    let engine_thread = engine_thread() - engine_thread_before;
    let peak_rss = status_bytes(&pid.to_string(), "VmHWM:").unwrap_or(0);
    let polled = match pollers {
        Some(pollers) => pollers.finish().await,
        None => Polled::default(),
    };
    target.stop();
    let _ = std::fs::remove_dir_all(&models);
    Ok(Measure {
        spans_per_second: spans as f64 / elapsed,
        cpu_micros_per_span: cpu * 1e6 / spans as f64,
        engine_thread_micros_per_span: engine_thread * 1e6 / spans as f64,
        peak_rss,
        ready_rss,
        polled,
    })
}

/// `stormwatch replay FILE` (engine) or `bench-reference --file FILE` (decode and drop).
pub(crate) async fn run_file(setup: &Setup, file: &Path, spans: u64, engine: bool) -> anyhow::Result<Measure> {
    let args: Vec<String> = if engine {
        vec!["replay".into(), "--quiet".into(), file.display().to_string()]
    } else {
        vec!["bench-reference".into(), "--file".into(), file.display().to_string()]
    };
    let started = Instant::now();
    let mut target = Target::spawn(if engine { "replay" } else { "file reference" }, &args, &setup.dir)?;
    let pid = target.pid();
    let (mut cpu, mut peak_rss) = (0.0, 0);
    // Poll until it exits; a zombie's /proc times are its final ones.
    loop {
        if let Some(value) = cpu_seconds(pid, setup.ticks) {
            cpu = value;
        }
        peak_rss = peak_rss.max(status_bytes(&pid.to_string(), "VmHWM:").unwrap_or(0));
        if is_zombie(pid) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let status = target.child.wait()?;
    if !status.success() {
        return Err(target.failure("failed"));
    }
    Ok(Measure {
        spans_per_second: spans as f64 / elapsed,
        cpu_micros_per_span: cpu * 1e6 / spans as f64,
        peak_rss,
        ..Measure::default()
    })
}

/// The Kafka input: the traffic in a new 4-partition topic, consumed by one engine, then by two
/// in one group (static ids). Clock from the first message consumed to the last span processed.
pub(crate) async fn run_kafka(
    setup: &Setup,
    batches: &[Batch],
    spans: u64,
    brokers: &str,
) -> anyhow::Result<Vec<(usize, Measure)>> {
    let stamp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis();
    let topic = format!("stormwatch-bench-{}-{stamp}", std::process::id());
    let alerts = format!("{topic}-alerts");
    let payloads: Vec<Bytes> = batches.iter().map(|b| b.body.clone()).collect();
    stormwatch_io::kafka::create_and_fill_topic(brokers, &alerts, 1, &[]).await?;
    stormwatch_io::kafka::create_and_fill_topic(brokers, &topic, 4, &payloads).await?;
    let mut results = Vec::new();
    for count in [1usize, 2] {
        eprintln!("bench: kafka: {count} engine(s) consuming ...");
        let mut targets = Vec::new();
        let mut admins = Vec::new();
        for i in 0..count {
            let config = format!(
                "[output]\nstdout = false\n\n[kafka]\nbrokers = \"{brokers}\"\nalert_topic = \"{alerts}\"\n\
                 input_topic = \"{topic}\"\ngroup_id = \"{topic}-{count}\"\ninstance_id = \"engine-{i}\"\n"
            );
            let name = format!("kafka-{count}-{i}");
            let args_for = |l: &Listeners| serve_args(&setup.dir, &name, &config, l, &["--kafka-input"]);
            let (target, listeners) = spawn_listening("engine", &setup.dir, args_for, |l| vec![l.admin]).await?;
            targets.push(target);
            admins.push(listeners.admin);
        }
        let sum = |name: &'static str, admins: Vec<SocketAddr>| async move {
            let mut total = 0.0;
            for admin in admins {
                total += metric(admin, name).await.unwrap_or(0.0);
            }
            total
        };
        let deadline = Instant::now() + Duration::from_secs(600);
        while sum("stormwatch_kafka_messages_total", admins.clone()).await == 0.0 {
            anyhow::ensure!(Instant::now() < deadline, "no engine consumed from {topic} in 10 minutes");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let started = Instant::now();
        let cpu_before: f64 = targets.iter().filter_map(|t| cpu_seconds(t.pid(), setup.ticks)).sum();
        while sum("stormwatch_spans_processed_total", admins.clone()).await < spans as f64 {
            anyhow::ensure!(Instant::now() < deadline, "the engines did not process every span of {topic}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let elapsed = started.elapsed().as_secs_f64();
        let cpu = targets.iter().filter_map(|t| cpu_seconds(t.pid(), setup.ticks)).sum::<f64>() - cpu_before;
        let peak_rss = targets.iter().filter_map(|t| status_bytes(&t.pid().to_string(), "VmHWM:")).max().unwrap_or(0);
        for target in targets {
            target.stop();
        }
        results.push((
            count,
            Measure {
                spans_per_second: spans as f64 / elapsed,
                cpu_micros_per_span: cpu * 1e6 / spans as f64,
                peak_rss,
                ..Measure::default()
            },
        ));
    }
    Ok(results)
}
