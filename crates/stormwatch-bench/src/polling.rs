//! The admin API's cost to the engine (`bench --admin-polling`): an engine that tracks
//! [`POLLED_EDGES`] edges (loaded from a snapshot) takes the gRPC traffic with and without
//! [`POLLERS`] clients reading what a dashboard or a console shows ([`READS`], each client all
//! three every [`POLL_EVERY`]), in pairs over the runs (which goes first alternates); medians. The dashboards
//! are open before the traffic starts (each read once). With `--latency-seconds`, the alert
//! latency is measured both ways too.

use crate::latency::latency;
use crate::memory::synthetic_store;
use crate::runs::{median, run_server, Extras, Measure, Setup};
use crate::traffic::Batch;
use crate::{human, BenchTransport};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Edges the engine tracks in the polling runs.
pub(crate) const POLLED_EDGES: u64 = 100_000;
/// Clients polling the admin API.
pub(crate) const POLLERS: usize = 4;
/// How often each client asks its reads.
pub(crate) const POLL_EVERY: Duration = Duration::from_millis(250);
/// What each client asks, in turn: the console's baselines table, its graph and its feed.
pub(crate) const READS: [&str; 3] = ["/api/baselines?limit=1000", "/api/graph", "/api/alerts"];

/// What the pollers of one run got: reads answered with 200, reads that failed, and the
/// median and p99 time to a whole answer (milliseconds).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Polled {
    pub(crate) answered: u64,
    pub(crate) failed: u64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
}

/// [`POLLERS`] clients reading an engine's admin API until finished.
pub(crate) struct Pollers {
    stop: CancellationToken,
    clients: Vec<JoinHandle<(u64, Vec<f64>)>>,
}

impl Pollers {
    /// Starts the clients on `admin`.
    pub(crate) fn start(admin: SocketAddr) -> Pollers {
        let stop = CancellationToken::new();
        let clients = (0..POLLERS)
            .map(|client| {
                let stop = stop.clone();
                tokio::spawn(async move {
                    // Spread over the period, as independent dashboards are.
                    tokio::time::sleep(POLL_EVERY * client as u32 / POLLERS as u32).await;
                    let (mut failed, mut millis) = (0, Vec::new());
                    while !stop.is_cancelled() {
                        let round = Instant::now();
                        for path in READS {
                            let asked = Instant::now();
                            match read(admin, path).await {
                                Ok(()) => millis.push(asked.elapsed().as_secs_f64() * 1e3),
                                Err(_) => failed += 1,
                            }
                        }
                        tokio::select! {
                            _ = stop.cancelled() => {}
                            _ = tokio::time::sleep(POLL_EVERY.saturating_sub(round.elapsed())) => {}
                        }
                    }
                    (failed, millis)
                })
            })
            .collect();
        Pollers { stop, clients }
    }

    /// Stops the clients (a read under way is waited for) and sums up what they got.
    pub(crate) async fn finish(self) -> Polled {
        self.stop.cancel();
        let (mut failed, mut millis) = (0, Vec::new());
        for client in self.clients {
            if let Ok((client_failed, client_millis)) = client.await {
                failed += client_failed;
                millis.extend(client_millis);
            }
        }
        millis.sort_by(f64::total_cmp);
        let quantile =
            |q: f64| millis.get(((millis.len() as f64 * q).ceil() as usize).saturating_sub(1)).copied().unwrap_or(0.0);
        Polled { answered: millis.len() as u64, failed, p50_ms: quantile(0.5), p99_ms: quantile(0.99) }
    }
}

/// Each read once, before the clock starts: dashboards that are already open (what a
/// published view costs to build is paid once, when the first reader comes).
pub(crate) async fn open_dashboards(admin: SocketAddr) -> anyhow::Result<()> {
    for path in READS {
        read(admin, path).await?;
    }
    Ok(())
}

/// One `GET` of the admin API, read to its end; an error unless it answered 200.
async fn read(admin: SocketAddr, path: &str) -> anyhow::Result<()> {
    let mut stream = tokio::net::TcpStream::connect(admin).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await?;
    anyhow::ensure!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{path}: {}",
        String::from_utf8_lossy(&answer[..answer.len().min(80)])
    );
    Ok(())
}

/// The polling runs, printed: throughput with and without the pollers (and the alert latency
/// both ways when `latency` is given: the rate, seconds and batch size of the latency run).
pub(crate) async fn admin_polling(
    setup: &Setup,
    batches: &Arc<Vec<Batch>>,
    spans: u64,
    latency_run: Option<(f64, u64, usize)>,
) -> anyhow::Result<()> {
    eprintln!("bench: admin polling: a snapshot of {} tracked edges ...", human(POLLED_EDGES as f64));
    let (store, snapshot) = tokio::task::spawn_blocking(|| {
        let store = synthetic_store(POLLED_EDGES);
        let snapshot = Arc::new(stormwatch_baseline::encode_snapshot(&store));
        (store, snapshot)
    })
    .await?;
    let quiet = Extras { snapshot: Some(snapshot.clone()), pollers: false };
    let polled = Extras { snapshot: Some(snapshot.clone()), pollers: true };
    let (mut without, mut with) = (Vec::new(), Vec::new());
    for run in 0..setup.runs {
        eprintln!("bench: admin polling run {}/{} ...", run + 1, setup.runs);
        // Which goes first alternates, so what favours the first or second run of a pair cancels.
        for extras in if run % 2 == 0 { [&quiet, &polled] } else { [&polled, &quiet] } {
            let measured = run_server(setup, batches, spans, BenchTransport::Grpc, true, (run, extras)).await?;
            if extras.pollers { &mut with } else { &mut without }.push(measured);
        }
    }
    print_polling(&without, &with);
    let runs = setup.runs.max(3);
    let (copy, encode) = tokio::task::spawn_blocking(move || export_costs(&store, runs)).await?;
    println!(
        "  GET /api/snapshot (the baselines of {} edges, a {:.0} MB document): the engine thread copies the store in \
         {copy:.0} ms, the snapshot thread encodes the copy in {encode:.0} ms (before, the engine thread encoded it: \
         {:.3} of that pause remains; medians of {runs})",
        human(POLLED_EDGES as f64),
        snapshot.len() as f64 / 1e6,
        copy / encode.max(1e-9),
    );
    if let Some((rate, seconds, batch_spans)) = latency_run {
        for pollers in [false, true] {
            let run = Extras { snapshot: Some(snapshot.clone()), pollers };
            latency(setup, rate, seconds, batch_spans, &run).await?;
        }
    }
    Ok(())
}

/// The polling runs' table: the quiet runs (`without`) and the polled (`with`), in pairs.
fn print_polling(without: &[Measure], with: &[Measure]) {
    let of = |runs: &[Measure], f: fn(&Measure) -> f64| median(&mut runs.iter().map(f).collect::<Vec<_>>());
    // Each polled run against the quiet run of its pair, so drift between runs cancels.
    let pairs = |f: fn(&Measure) -> f64| -> (f64, String) {
        let mut ratios: Vec<f64> = without.iter().zip(with).map(|(q, p)| f(p) / f(q).max(1e-9)).collect();
        let each: Vec<String> = ratios.iter().map(|r| format!("{r:.3}")).collect();
        (median(&mut ratios), each.join(" "))
    };
    let (ratio, each) = pairs(|m| m.spans_per_second);
    let reads = |f: fn(&Polled) -> f64| median(&mut with.iter().map(|m| f(&m.polled)).collect::<Vec<_>>());
    let mb = |runs: &[Measure]| of(runs, |m| m.peak_rss as f64) / 1e6;
    println!();
    println!(
        "admin reads: an engine tracking {} edges, gRPC, without and with {POLLERS} clients each reading {} every {} ms",
        human(POLLED_EDGES as f64),
        READS.join(", "),
        POLL_EVERY.as_millis()
    );
    println!(
        "{:<12} {:>14} {:>12} {:>14} {:>10} {:>14} {:>14} {:>22}",
        "polling", "spans/s", "CPU µs/span", "engine thread", "peak RSS", "polled/quiet", "reads", "read p50 / p99 ms"
    );
    println!(
        "{:<12} {:>14} {:>12.2} {:>14.3} {:>10}",
        "none",
        human(of(without, |m| m.spans_per_second)),
        of(without, |m| m.cpu_micros_per_span),
        of(without, |m| m.engine_thread_micros_per_span),
        format!("{:.0} MB", mb(without))
    );
    println!(
        "{:<12} {:>14} {:>12.2} {:>14.3} {:>10} {:>14.3} {:>14} {:>22}",
        format!("{POLLERS} clients"),
        human(of(with, |m| m.spans_per_second)),
        of(with, |m| m.cpu_micros_per_span),
        of(with, |m| m.engine_thread_micros_per_span),
        format!("{:.0} MB", mb(with)),
        ratio,
        format!("{:.0} ({:.0} failed)", reads(|p| p.answered as f64), reads(|p| p.failed as f64)),
        format!("{:.1} / {:.1}", reads(|p| p.p50_ms), reads(|p| p.p99_ms)),
    );
    println!("  spans/s polled/quiet of each pair, in run order: {each}");
    let (thread_ratio, each) = pairs(|m| m.engine_thread_micros_per_span);
    println!("  the engine thread's CPU µs per span, polled/quiet: {thread_ratio:.3} (median; each pair: {each})");
    let ready = |runs: &[Measure]| of(runs, |m| m.ready_rss as f64);
    println!(
        "  the published view: {:.0} bytes per tracked edge (resident set once the dashboards were open, less the \
         quiet run's when its traffic started: {:.0} MB and {:.0} MB)",
        (ready(with) - ready(without)) / POLLED_EDGES as f64,
        ready(with) / 1e6,
        ready(without) / 1e6
    );
}

/// What an export of `store` costs, medians of `runs` (milliseconds): the copy the engine
/// thread makes, and the encoding the snapshot thread does (all of it on the engine thread
/// before).
fn export_costs(store: &stormwatch_baseline::BaselineStore, runs: usize) -> (f64, f64) {
    let (mut copies, mut encodings) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let started = Instant::now();
        let copy = store.clone();
        copies.push(started.elapsed().as_secs_f64() * 1e3);
        let started = Instant::now();
        let document = stormwatch_baseline::encode_snapshot(&copy);
        encodings.push(started.elapsed().as_secs_f64() * 1e3);
        drop((copy, document));
    }
    (median(&mut copies), median(&mut encodings))
}
