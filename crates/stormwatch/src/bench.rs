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

use std::collections::HashMap;
use std::io::{BufWriter, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use bytes::Bytes;
use prost::Message;
use stormwatch_io::otlp::client::{Export, OtlpClient};
use stormwatch_loadgen::{Change, Generator, Scenario};
use stormwatch_otlp::collector::ExportTraceServiceRequest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::{BenchArgs, BenchTransport};

/// The default traffic: 300 generated services in Alibaba-2021-shaped call graphs.
const DEFAULT_SCENARIO: &str = include_str!("../../../tests/scenarios/large-generated.toml");
/// The latency phase's attack, added to the default scenario (its own changes are dropped).
/// It starts once the baselines it is judged by have their learning minimum: an attack that
/// is there from the first request is learned as normal.
const LATENCY_ATTACK: &str = r#"
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

/// One pre-encoded export request.
struct Batch {
    body: Bytes,
    spans: u64,
}

/// Encoded traffic and what it is made of.
struct Traffic {
    batches: Vec<Batch>,
    spans: u64,
    traces: u64,
    bytes: u64,
    /// Trace id (hex) -> index of the batch that carries it, for traces a change touched.
    attacked: HashMap<String, usize>,
}

fn generate(scenario: &Scenario, max_spans: u64, batch_spans: usize) -> Traffic {
    let mut generator = Generator::new(scenario);
    let mut traffic = Traffic { batches: Vec::new(), spans: 0, traces: 0, bytes: 0, attacked: HashMap::new() };
    let mut batch = ExportTraceServiceRequest::default();
    let mut in_batch = 0usize;
    let mut trace_batches: Vec<([u8; 16], usize)> = Vec::new();
    for trace in generator.by_ref() {
        if traffic.spans >= max_spans {
            break;
        }
        traffic.spans += trace.spans as u64;
        traffic.traces += 1;
        in_batch += trace.spans;
        trace_batches.push((trace.trace_id, traffic.batches.len()));
        batch.resource_spans.extend(trace.request.resource_spans);
        if in_batch >= batch_spans {
            let body = Bytes::from(std::mem::take(&mut batch).encode_to_vec());
            traffic.bytes += body.len() as u64;
            traffic.batches.push(Batch { body, spans: in_batch as u64 });
            in_batch = 0;
        }
    }
    if in_batch > 0 {
        let body = Bytes::from(batch.encode_to_vec());
        traffic.bytes += body.len() as u64;
        traffic.batches.push(Batch { body, spans: in_batch as u64 });
    }
    let touched: std::collections::HashSet<String> =
        generator.labels().changes.iter().flat_map(|change| change.trace_ids.iter().cloned()).collect();
    for (trace_id, batch) in trace_batches {
        let hex = stormwatch_model::TraceId(trace_id).to_string();
        if touched.contains(&hex) {
            traffic.attacked.insert(hex, batch);
        }
    }
    traffic
}

/// CPU seconds (user + system) a process has used, from `/proc/PID/stat`.
fn cpu_seconds(pid: u32, ticks_per_second: f64) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / ticks_per_second)
}

/// Whether a process has exited but not been reaped (its `/proc` times are final).
fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('Z')))
        .unwrap_or(true)
}

/// A `/proc/PID/status` field in bytes (`VmHWM`: peak resident set; `VmRSS`: current).
fn status_bytes(pid: &str, field: &str) -> Option<u64> {
    proc_kilobytes(&format!("/proc/{pid}/status"), field)
}

/// A `field  N kB` line of a `/proc` file, in bytes.
fn proc_kilobytes(path: &str, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().find(|line| line.starts_with(field))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8_lossy(&out.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let memory = proc_kilobytes("/proc/meminfo", "MemTotal:")
        .map_or(String::new(), |b| format!(", {:.0} GiB", b as f64 / (1u64 << 30) as f64));
    format!("{cpus} CPUs ({model}){memory}")
}

fn free_address() -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?;
    Ok(listener.local_addr()?)
}

/// Listen addresses for one child, on free ports.
struct Listeners {
    grpc: SocketAddr,
    http: SocketAddr,
    admin: SocketAddr,
}

impl Listeners {
    fn free() -> anyhow::Result<Listeners> {
        Ok(Listeners { grpc: free_address()?, http: free_address()?, admin: free_address()? })
    }
}

/// Starts a child on free ports and waits until it listens on `wait_for` of them. A port found
/// free can be taken by another process before the child binds it: then it tries other ports.
async fn spawn_listening(
    name: &'static str,
    dir: &Path,
    args_for: impl Fn(&Listeners) -> anyhow::Result<Vec<String>>,
    wait_for: impl Fn(&Listeners) -> Vec<SocketAddr>,
) -> anyhow::Result<(Target, Listeners)> {
    let mut attempt = 1;
    loop {
        let listeners = Listeners::free()?;
        let mut target = Target::spawn(name, &args_for(&listeners)?, dir)?;
        let mut failure = None;
        for address in wait_for(&listeners) {
            if let Err(error) = target.wait_listening(address).await {
                failure = Some(error);
                break;
            }
        }
        match failure {
            None => return Ok((target, listeners)),
            Some(error) if attempt < 5 && format!("{error:#}").contains("Address already in use") => {
                target.stop();
                attempt += 1;
            }
            Some(error) => return Err(error),
        }
    }
}

/// `serve` with `config` (written here), its own models directory, and `listeners`.
fn serve_args(
    dir: &Path,
    name: &str,
    config: &str,
    listeners: &Listeners,
    extra: &[&str],
) -> anyhow::Result<Vec<String>> {
    let config_path = dir.join(format!("{name}.toml"));
    std::fs::write(&config_path, config)?;
    let mut args: Vec<String> = vec![
        "serve".into(),
        "--config".into(),
        config_path.display().to_string(),
        "--models".into(),
        dir.join(format!("models-{name}")).display().to_string(),
        "--otlp-grpc".into(),
        listeners.grpc.to_string(),
        "--otlp-http".into(),
        listeners.http.to_string(),
        "--admin".into(),
        listeners.admin.to_string(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    Ok(args)
}

/// A child process of this binary, its stderr in a log file shown when it fails.
struct Target {
    child: Child,
    log: PathBuf,
    name: &'static str,
}

impl Target {
    fn spawn(name: &'static str, args: &[String], dir: &Path) -> anyhow::Result<Target> {
        let exe = std::env::current_exe().context("cannot find the stormwatch binary")?;
        let log = dir.join(format!("{name}.log"));
        let stderr = std::fs::File::create(&log)?;
        let mut command = std::process::Command::new(exe);
        command.args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(stderr);
        for (key, _) in std::env::vars() {
            if key.starts_with("STORMWATCH_") {
                command.env_remove(key);
            }
        }
        command.env("RUST_LOG", "warn");
        let child = command.spawn().with_context(|| format!("cannot start the {name}"))?;
        Ok(Target { child, log, name })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn failure(&mut self, what: &str) -> anyhow::Error {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let status = self.child.try_wait().ok().flatten().map_or("running".to_string(), |s| s.to_string());
        anyhow::anyhow!("{}: {what} (process {status}); its log:\n{}", self.name, log.trim_end())
    }

    async fn wait_listening(&mut self, address: SocketAddr) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if tokio::net::TcpStream::connect(address).await.is_ok() {
                return Ok(());
            }
            if self.child.try_wait()?.is_some() {
                return Err(self.failure("exited before listening"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(self.failure(&format!("not listening on {address} after 20 s")))
    }

    fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One value of the engine's Prometheus metrics.
async fn metric(admin: SocketAddr, name: &str) -> Option<f64> {
    let mut stream = tokio::net::TcpStream::connect(admin).await.ok()?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).await.ok()?;
    text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// How a well-behaved exporter backs off a refusal: 10 ms, doubling to 500 ms.
const EXPORTER_BACKOFF: (Duration, Duration) = (Duration::from_millis(10), Duration::from_millis(500));

/// What a send achieved.
struct Sent {
    started: Instant,
    refused_exports: u64,
    /// Spans in the refused exports (each refusal counts its spans again).
    refused_spans: u64,
}

/// Sends every batch over `connections` connections, paced at `rate` spans/s when given,
/// retrying refused exports after a backoff from `first` doubling to `most`; records when each
/// batch was acknowledged (nanoseconds since `started`) in `acked`.
async fn send(
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

/// Overload: the engine's detection thread pinned to one CPU (`taskset -p`) that it shares
/// with seven busy loops, while its receivers decode on both, fed over gRPC by 8 connections
/// that retry a refusal after 2 ms: it is offered more than twice what it can take. What is
/// offered counts every attempt, refused ones included. The engine's peak RSS must stay under the bound
/// its settings imply: its idle RSS, plus the span queue (`server.queue_max_spans` decoded
/// spans), plus the assembler (`assemble.max_in_flight_spans` at the measured bytes per
/// in-flight span), plus its baselines; otherwise the bench fails.
async fn overload(
    setup: &Setup,
    batches: &Arc<Vec<Batch>>,
    spans: u64,
    bytes_per_in_flight_span: f64,
    bytes_per_edge: f64,
) -> anyhow::Result<()> {
    const QUEUE_MAX_SPANS: u64 = 200_000;
    const MAX_IN_FLIGHT_SPANS: u64 = 1_000_000;
    let config = format!(
        "[output]\nstdout = false\n\n[server]\nqueue_max_spans = {QUEUE_MAX_SPANS}\n\n\
         [assemble]\nmax_in_flight_spans = {MAX_IN_FLIGHT_SPANS}\n"
    );
    let alerts = setup.dir.join("overload-alerts.jsonl").display().to_string();
    let args_for = |l: &Listeners| serve_args(&setup.dir, "overload", &config, l, &["--alerts-file", &alerts]);
    let (mut target, listeners) = spawn_listening("engine", &setup.dir, args_for, |l| vec![l.grpc, l.admin]).await?;
    // The detection thread on CPU 1, with busy loops beside it (each exits when this process
    // does): what the engine can take drops well below what the receivers decode.
    let engine_thread = std::fs::read_dir(format!("/proc/{}/task", target.pid()))?
        .filter_map(Result::ok)
        .find(|task| {
            std::fs::read_to_string(task.path().join("comm")).is_ok_and(|comm| comm.starts_with("stormwatch-engi"))
        })
        .map(|task| task.file_name().to_string_lossy().into_owned());
    let pinned = engine_thread.is_some_and(|tid| {
        std::process::Command::new("taskset")
            .args(["-p", "-c", "1", &tid])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    eprintln!(
        "bench: overload ({}) ...",
        if pinned { "engine thread on CPU 1" } else { "taskset unavailable: unpinned" }
    );
    let mut hogs = Vec::new();
    if pinned {
        for _ in 0..7 {
            let hog = std::process::Command::new("taskset")
                .args(["-c", "1", "sh", "-c", &format!("while kill -0 {} 2>/dev/null; do :; done", std::process::id())])
                .stdin(Stdio::null())
                .spawn();
            hogs.extend(hog.ok());
        }
    }
    let stop_hogs = |hogs: &mut Vec<Child>| {
        for mut hog in hogs.drain(..) {
            let _ = hog.kill();
            let _ = hog.wait();
        }
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = target.pid().to_string();
    let idle_rss = status_bytes(&pid, "VmRSS:").unwrap_or(0);
    let acked = Arc::new(Vec::new());
    let endpoint = format!("grpc://{}", listeners.grpc);
    let backoff = (Duration::from_millis(2), Duration::from_millis(2));
    let sent = match send(&endpoint, batches.clone(), 8, None, acked, backoff).await {
        Ok(sent) => sent,
        Err(error) => {
            stop_hogs(&mut hogs);
            return Err(target.failure(&format!("{error:#}")));
        }
    };
    let sending = sent.started.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(600);
    while metric(listeners.admin, "stormwatch_spans_processed_total").await.unwrap_or(0.0) < spans as f64 {
        if Instant::now() > deadline || target.child.try_wait()?.is_some() {
            stop_hogs(&mut hogs);
            return Err(target.failure("did not process every span"));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let processing = sent.started.elapsed().as_secs_f64();
    stop_hogs(&mut hogs);
    let edges = metric(listeners.admin, "stormwatch_edges_tracked").await.unwrap_or(0.0);
    let peak_rss = status_bytes(&pid, "VmHWM:").unwrap_or(0);
    target.stop();
    let queue = QUEUE_MAX_SPANS * std::mem::size_of::<stormwatch_model::Span>() as u64;
    let in_flight = (MAX_IN_FLIGHT_SPANS as f64 * bytes_per_in_flight_span) as u64;
    let baselines = (edges * bytes_per_edge) as u64;
    let bound = idle_rss + queue + in_flight + baselines;
    let offered = (spans + sent.refused_spans) as f64 / sending.max(1e-9);
    let processed = spans as f64 / processing.max(1e-9);
    println!(
        "overload{}: offered {} spans/s, processed {} ({:.1}x overload), {} exports refused with UNAVAILABLE and retried, none lost",
        if pinned { " (engine thread on 1 CPU shared with 7 busy loops)" } else { "" },
        human(offered),
        human(processed),
        offered / processed.max(1e-9),
        human(sent.refused_exports as f64)
    );
    println!(
        "  peak RSS {} under the bound {} = idle {} + queue {} ({} spans) + in flight {} ({} spans) + baselines {} ({} edges)",
        mb(peak_rss),
        mb(bound),
        mb(idle_rss),
        mb(queue),
        human(QUEUE_MAX_SPANS as f64),
        mb(in_flight),
        human(MAX_IN_FLIGHT_SPANS as f64),
        mb(baselines),
        human(edges)
    );
    if peak_rss > bound {
        bail!("overload: peak RSS {} exceeded the bound {}", mb(peak_rss), mb(bound));
    }
    Ok(())
}

/// One measured run of one target.
#[derive(Clone, Copy, Debug, Default)]
struct Measure {
    spans_per_second: f64,
    cpu_micros_per_span: f64,
    peak_rss: u64,
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

struct Setup {
    dir: PathBuf,
    ticks: f64,
    connections: usize,
    runs: usize,
}

/// The reference or the engine, fed over `transport` until it has taken every span.
async fn run_server(
    setup: &Setup,
    traffic: &Arc<Vec<Batch>>,
    spans: u64,
    transport: BenchTransport,
    engine: bool,
    run: usize,
) -> anyhow::Result<Measure> {
    let alerts = setup.dir.join(format!("alerts-{run}.jsonl")).display().to_string();
    let args_for = |listeners: &Listeners| {
        if engine {
            let config = "[output]\nstdout = false\n";
            serve_args(&setup.dir, &format!("engine-{run}"), config, listeners, &["--alerts-file", &alerts])
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
    let pid = target.pid();
    let cpu_before = cpu_seconds(pid, setup.ticks).unwrap_or(0.0);
    let acked = Arc::new(Vec::new());
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
    let peak_rss = status_bytes(&pid.to_string(), "VmHWM:").unwrap_or(0);
    target.stop();
    Ok(Measure { spans_per_second: spans as f64 / elapsed, cpu_micros_per_span: cpu * 1e6 / spans as f64, peak_rss })
}

/// `stormwatch replay FILE` (engine) or `bench-reference --file FILE` (decode and drop).
async fn run_file(setup: &Setup, file: &Path, spans: u64, engine: bool) -> anyhow::Result<Measure> {
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
    Ok(Measure { spans_per_second: spans as f64 / elapsed, cpu_micros_per_span: cpu * 1e6 / spans as f64, peak_rss })
}

fn write_binpb(traffic: &Traffic, path: &Path) -> anyhow::Result<()> {
    // One length-prefixed request per batch, as `loadgen -o FILE.binpb` writes them.
    let mut out = BufWriter::new(std::fs::File::create(path)?);
    for batch in &traffic.batches {
        out.write_all(&(batch.body.len() as u32).to_be_bytes())?;
        out.write_all(&batch.body)?;
    }
    out.flush()?;
    Ok(())
}

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

/// What `bench-memory` prints.
#[derive(serde::Serialize, serde::Deserialize)]
struct MemoryReport {
    in_flight_spans: u64,
    bytes_per_in_flight_span: f64,
    edges: u64,
    bytes_per_edge: f64,
}

pub(crate) async fn run(args: BenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.runs >= 1, "--runs must be at least 1");
    anyhow::ensure!(args.connections >= 1, "--connections must be at least 1");
    anyhow::ensure!(args.spans >= 10_000, "--spans must be at least 10000 for a meaningful figure");
    anyhow::ensure!(
        args.latency_seconds == 0 || args.latency_seconds >= 10,
        "--latency-seconds must be 0 (skip) or at least 10: the attack starts after 3 s of learning, and traces \
         of the last 6 s complete only after the stream ends"
    );
    let text = match &args.scenario {
        Some(path) => {
            std::fs::read_to_string(path).with_context(|| format!("cannot read scenario {}", path.display()))?
        }
        None => DEFAULT_SCENARIO.to_string(),
    };
    let mut scenario = Scenario::parse(&text).map_err(|e| anyhow::anyhow!("scenario: {e}"))?;
    // Long enough to give the requested spans.
    scenario.duration = scenario.duration.max(Duration::from_secs(24 * 3600));
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
        let mut reference = Vec::new();
        let mut engine = Vec::new();
        if *transport == BenchTransport::File && !file.exists() {
            write_binpb(&traffic, &file)?;
        }
        for run in 0..setup.runs {
            eprintln!("bench: {} run {}/{} ...", transport.as_str(), run + 1, setup.runs);
            match transport {
                BenchTransport::File => {
                    reference.push(run_file(&setup, &file, spans, false).await?);
                    engine.push(run_file(&setup, &file, spans, true).await?);
                }
                _ => {
                    reference.push(run_server(&setup, &batches, spans, *transport, false, run).await?);
                    engine.push(run_server(&setup, &batches, spans, *transport, true, run).await?);
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
        if *transport == BenchTransport::Grpc {
            engine_grpc = engine_rate;
        }
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
        eprintln!("bench: kafka: writing the traffic to a topic on {brokers} ...");
        let runs = run_kafka(&setup, &batches, spans, brokers).await?;
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
        latency(&setup, engine_grpc * 0.7, args.latency_seconds, args.batch_spans).await?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// The Kafka input: the traffic in a new 4-partition topic, consumed by one engine, then by two
/// in one group (static ids). Clock from the first message consumed to the last span processed.
async fn run_kafka(
    setup: &Setup,
    batches: &[Batch],
    spans: u64,
    brokers: &str,
) -> anyhow::Result<Vec<(usize, Measure)>> {
    let stamp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis();
    let topic = format!("stormwatch-bench-{}-{stamp}", std::process::id());
    let alerts = format!("{topic}-alerts");
    let payloads: Vec<Bytes> = batches.iter().map(|b| b.body.clone()).collect();
    stormwatch_io::kafka::create_and_fill_topic(brokers, &alerts, 1, &[]).await.map_err(anyhow::Error::msg)?;
    stormwatch_io::kafka::create_and_fill_topic(brokers, &topic, 4, &payloads).await.map_err(anyhow::Error::msg)?;
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
            },
        ));
    }
    Ok(results)
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let stamp = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let dir = std::env::temp_dir().join(format!("stormwatch-bench-{}-{stamp}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

/// Alert latency at `rate` spans/s: event time at wall-clock speed, an N+1 attack in a small
/// share of requests, every alert emitted (no throttling).
async fn latency(setup: &Setup, rate: f64, seconds: u64, batch_spans: usize) -> anyhow::Result<()> {
    let mut scenario = Scenario::parse(DEFAULT_SCENARIO).map_err(|e| anyhow::anyhow!("scenario: {e}"))?;
    let probe = generate(&scenario, 50_000, batch_spans);
    let spans_per_request = probe.spans as f64 / probe.traces as f64;
    let mut attack = toml::from_str::<Change>(LATENCY_ATTACK).context("the latency attack")?;
    scenario.rate = rate / spans_per_request;
    // About 20 attacked requests a second, whatever the rate (2% of the entry at least).
    let total_weight: f64 = scenario.entries.iter().map(|e| e.weight).sum();
    let entry_weight: f64 = scenario.entries.iter().filter(|e| e.service == "bff").map(|e| e.weight).sum();
    let entry_rate = scenario.rate * entry_weight / total_weight.max(1e-9);
    attack.share = (20.0 / entry_rate.max(1e-9)).clamp(0.02, 0.5);
    scenario.changes = vec![attack];
    scenario.duration = Duration::from_secs(seconds);
    scenario.start_unix_seconds = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + 2;
    eprintln!("bench: latency at {} spans/s for {seconds} s ...", human(rate));
    let traffic = tokio::task::spawn_blocking({
        let scenario = scenario.clone();
        move || generate(&scenario, u64::MAX, batch_spans)
    })
    .await?;

    // Every alert emitted (no folding of repeats), and room for rate x (trace_idle + trace
    // duration) spans in flight, as a deployment at this rate would configure it.
    let in_flight = ((rate * 12.0) as u64).max(6_000_000);
    let config = format!(
        "[output]\nstdout = false\n\n[detect]\nthrottle = \"0s\"\n\n[assemble]\nmax_in_flight_spans = {in_flight}\n"
    );
    let alerts_file = setup.dir.join("latency-alerts.jsonl");
    let alerts = alerts_file.display().to_string();
    let args_for = |l: &Listeners| serve_args(&setup.dir, "latency", &config, l, &["--alerts-file", &alerts]);
    let (mut target, listeners) = spawn_listening("engine", &setup.dir, args_for, |l| vec![l.grpc, l.admin]).await?;
    let grpc = listeners.grpc;
    // Start when the traffic's event time begins.
    let start_at = UNIX_EPOCH + Duration::from_secs(scenario.start_unix_seconds);
    if let Ok(wait) = start_at.duration_since(SystemTime::now()) {
        tokio::time::sleep(wait).await;
    }
    let batches: Arc<Vec<Batch>> = Arc::new(traffic.batches);
    let acked: Arc<Vec<AtomicU64>> = Arc::new((0..batches.len()).map(|_| AtomicU64::new(0)).collect());
    let stop = CancellationToken::new();
    let watcher = tokio::spawn(watch_alerts(alerts_file.clone(), traffic.attacked.clone(), stop.clone()));
    let endpoint = format!("grpc://{grpc}");
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
    target.stop();
    // Traces sent in the last trace_idle (+1 s) of the stream complete only through the
    // quiet-stream fallback after it ends: steady state is the traces before them.
    let last_ack = acked.iter().map(|a| a.load(Ordering::Relaxed)).max().unwrap_or(0);
    let cutoff = last_ack.saturating_sub(6_000_000_000);
    let steady =
        |batch: usize| acked.get(batch).map(|a| a.load(Ordering::Relaxed)).filter(|at| *at > 0 && *at <= cutoff);
    let attacked_steady = traffic.attacked.values().filter(|batch| steady(**batch).is_some()).count();
    let mut latencies: Vec<f64> = seen
        .iter()
        .filter_map(|(trace, at)| {
            let acked_at = steady(*traffic.attacked.get(trace)?)?;
            Some(at.saturating_duration_since(started + Duration::from_nanos(acked_at)).as_secs_f64())
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    let quantile = |q: f64| latencies.get(((latencies.len() as f64 * q).ceil() as usize).saturating_sub(1)).copied();
    let spans = spans_sent(&batches);
    println!(
        "alert latency at 70% of the engine's gRPC throughput ({} spans/s offered, {} achieved, {} retried exports): \
         {} of {} attacked requests alerted (those sent before the last 6 s of the stream)",
        human(rate),
        human(spans as f64 / sending.max(1e-9)),
        retries,
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

fn spans_sent(batches: &[Batch]) -> u64 {
    batches.iter().map(|b| b.spans).sum()
}

/// Tails the alerts file until `stop`: (exemplar trace id, when its alert was seen) for every
/// alert naming an attacked trace.
async fn watch_alerts(
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

async fn memory_report(spans: u64, edges: u64) -> anyhow::Result<MemoryReport> {
    let exe = std::env::current_exe().context("cannot find the stormwatch binary")?;
    let output = tokio::process::Command::new(exe)
        .args(["bench-memory", "--spans", &spans.to_string(), "--edges", &edges.to_string()])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .await
        .context("cannot run the memory probe")?;
    if !output.status.success() {
        bail!("the memory probe failed ({}): {}", output.status, String::from_utf8_lossy(&output.stderr));
    }
    serde_json::from_slice(&output.stdout).context("the memory probe's report")
}

/// `stormwatch bench-memory`: bytes per in-flight span (decoded loadgen spans buffered in an
/// assembler that never completes them) and per tracked edge (a baseline store with every
/// per-edge table filled), from this process's resident set.
pub(crate) fn memory_probe(args: crate::MemoryArgs) -> anyhow::Result<()> {
    use stormwatch_assemble::{Assembler, AssemblerConfig};
    use stormwatch_baseline::{BaselineStore, WindowMetric};
    use stormwatch_model::{Edge, Node, NodeKind, RootClass, Sym};

    let rss = || status_bytes("self", "VmRSS:").unwrap_or(0);
    let mut scenario = Scenario::parse(DEFAULT_SCENARIO).map_err(|e| anyhow::anyhow!("scenario: {e}"))?;
    scenario.duration = Duration::from_secs(24 * 3600);
    let traffic = generate(&scenario, args.spans.max(1_000), 512);
    let forever = u64::MAX / 4;
    let mut assembler = Assembler::new(AssemblerConfig {
        trace_idle_nanos: forever,
        trace_max_wait_nanos: forever,
        max_in_flight_spans: usize::MAX,
        max_future_skew_nanos: forever,
        remembered_traces: 200_000,
    });
    let mut completed = Vec::new();
    // Decode once first so buffers the decoder keeps are not counted.
    let _ = stormwatch_otlp::decode_protobuf(&traffic.batches[0].body)?;
    let before = rss();
    for batch in &traffic.batches {
        for span in stormwatch_otlp::decode_protobuf(&batch.body)?.spans {
            assembler.push(span, &mut completed);
        }
    }
    let in_flight = assembler.in_flight_spans() as u64;
    let per_span = rss().saturating_sub(before) as f64 / in_flight.max(1) as f64;
    anyhow::ensure!(completed.is_empty(), "the probe's assembler completed traces");

    let edges = args.edges.max(1_000);
    let class = RootClass { service: Sym::new("gateway"), operation: Sym::new("GET /feed"), query_shape: None };
    let before = rss();
    let mut store = BaselineStore::new(usize::MAX);
    for i in 0..edges {
        let edge = Edge {
            from: Node::service(Sym::new(&format!("service-{}", i / 20)), Sym::new(&format!("GET /op{}", i % 20))),
            to: Node {
                service: Sym::new("postgresql:main"),
                operation: Sym::new(&format!("SELECT * FROM table_{i} WHERE id = ?")),
                kind: NodeKind::Database,
            },
        };
        // Two days of hourly observations, with the spread real baselines have: calls per
        // parent 1-9, per request 2-12, work per entry request 0.1-0.5 (in thousandths), a
        // retry ratio that is mostly zero, an hour-of-day profile. Cache miss ratios exist only
        // for cache fallback edges and are left out.
        for k in 0..48u64 {
            let at = 1_800_000_000_000_000_000 + k * 3_600_000_000_000;
            store.observe_fanout(edge, &[1 + (k * 7 + i) % 9], at);
            store.observe_request_edge(class, edge, 2 + (k * 3 + i) % 11, at);
            store.observe_window_class(class, edge, 900 + (k * 13) % 300, at);
            store.observe_window(WindowMetric::WorkPerEntry, edge, 100 + (k * 17 + i) % 400, at);
            store.observe_window(WindowMetric::RetryRatio, edge, u64::from(k % 24 == 0) * 10, at);
            store.observe_seasonal(WindowMetric::WorkPerEntry, edge, 1_000 + k, at);
        }
    }
    let per_edge = rss().saturating_sub(before) as f64 / edges as f64;
    let report = MemoryReport {
        in_flight_spans: in_flight,
        bytes_per_in_flight_span: per_span,
        edges: store.edges_tracked() as u64,
        bytes_per_edge: per_edge,
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// `stormwatch bench-reference`: the decode-and-drop reference servers, or (`--file`) the
/// decode-and-drop of a length-prefixed protobuf file.
pub(crate) async fn reference(args: crate::ReferenceArgs) -> anyhow::Result<()> {
    if let Some(file) = &args.file {
        let data = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
        let mut rest = data.as_slice();
        let mut spans = 0usize;
        while rest.len() >= 4 {
            let length = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            anyhow::ensure!(rest.len() >= 4 + length, "{}: truncated", file.display());
            let request = ExportTraceServiceRequest::decode(&rest[4..4 + length])?;
            spans += request.resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len()).sum::<usize>();
            rest = &rest[4 + length..];
        }
        println!("{spans}");
        return Ok(());
    }
    let max = stormwatch_io::otlp::DEFAULT_MAX_MESSAGE_BYTES;
    let grpc = tokio::net::TcpListener::bind(&args.otlp_grpc).await?;
    let http = tokio::net::TcpListener::bind(&args.otlp_http).await?;
    let stop = CancellationToken::new();
    let grpc = tokio::spawn(stormwatch_io::otlp::reference::serve_reference_grpc(grpc, max, stop.clone()));
    let http = tokio::spawn(stormwatch_io::otlp::reference::serve_reference_http(http, max, stop.clone()));
    tokio::signal::ctrl_c().await?;
    stop.cancel();
    grpc.await??;
    http.await??;
    Ok(())
}
