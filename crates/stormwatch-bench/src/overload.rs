//! The overload run: the engine offered far more than it takes, its peak memory checked against
//! the bound its settings imply.

use crate::process::{metric, serve_args, spawn_listening, status_bytes, Listeners};
use crate::runs::Setup;
use crate::send::send;
use crate::traffic::Batch;
use crate::{human, mb};
use anyhow::bail;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The overload run's span queue bound (`server.queue_max_spans`).
const QUEUE_MAX_SPANS: u64 = 200_000;
/// The overload run's assembler bound (`assemble.max_in_flight_spans`).
const MAX_IN_FLIGHT_SPANS: u64 = 1_000_000;

/// Overload: the engine's detection thread pinned to one CPU (`taskset -p`) that it shares
/// with seven busy loops, while its receivers decode on both, fed over gRPC by 8 connections
/// that retry a refusal after 2 ms: it is offered more than twice what it can take. What is
/// offered counts every attempt, refused ones included. The engine's peak RSS must stay under the bound
/// its settings imply: its idle RSS, plus the span queue (`server.queue_max_spans` decoded
/// spans), plus the assembler (`assemble.max_in_flight_spans` at the measured bytes per
/// in-flight span), plus its baselines; otherwise the bench fails.
pub(crate) async fn overload(
    setup: &Setup,
    batches: &Arc<Vec<Batch>>,
    spans: u64,
    bytes_per_in_flight_span: f64,
    bytes_per_edge: f64,
) -> anyhow::Result<()> {
    let config = format!(
        "[output]\nstdout = false\n\n[server]\nqueue_max_spans = {QUEUE_MAX_SPANS}\n\n\
         [assemble]\nmax_in_flight_spans = {MAX_IN_FLIGHT_SPANS}\n"
    );
    let alerts = setup.dir.join("overload-alerts.jsonl").display().to_string();
    let args_for = |l: &Listeners| serve_args(&setup.dir, "overload", &config, l, &["--alerts-file", &alerts]);
    let (mut target, listeners) = spawn_listening("engine", &setup.dir, args_for, |l| vec![l.grpc, l.admin]).await?;
    let (pinned, mut hogs) = pin_engine_thread(target.pid())?;
    eprintln!(
        "bench: overload ({}) ...",
        if pinned { "engine thread on CPU 1" } else { "taskset unavailable: unpinned" }
    );
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
    let memory = MemoryBound {
        idle_rss,
        queue: QUEUE_MAX_SPANS * size_of::<stormwatch_model::Span>() as u64,
        in_flight: (MAX_IN_FLIGHT_SPANS as f64 * bytes_per_in_flight_span) as u64,
        baselines: (edges * bytes_per_edge) as u64,
        edges,
    };
    let bound = memory.total();
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
    memory.print(peak_rss);
    if peak_rss > bound {
        bail!("overload: peak RSS {} exceeded the bound {}", mb(peak_rss), mb(bound));
    }
    Ok(())
}

/// The detection thread on CPU 1, with seven busy loops beside it (each exits when this process
/// does): what the engine can take drops well below what the receivers decode. `false` (and no
/// loops) when `taskset` is unavailable.
fn pin_engine_thread(pid: u32) -> anyhow::Result<(bool, Vec<Child>)> {
    let engine_thread = std::fs::read_dir(format!("/proc/{pid}/task"))?
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
    Ok((pinned, hogs))
}

/// The engine's memory bound under overload: its idle RSS, the span queue, the assembler's
/// spans in flight, and its baselines.
struct MemoryBound {
    idle_rss: u64,
    queue: u64,
    in_flight: u64,
    baselines: u64,
    edges: f64,
}

impl MemoryBound {
    fn total(&self) -> u64 {
        self.idle_rss + self.queue + self.in_flight + self.baselines
    }

    fn print(&self, peak_rss: u64) {
        println!(
            "  peak RSS {} under the bound {} = idle {} + queue {} ({} spans) + in flight {} ({} spans) + baselines {} ({} edges)",
            mb(peak_rss),
            mb(self.total()),
            mb(self.idle_rss),
            mb(self.queue),
            human(QUEUE_MAX_SPANS as f64),
            mb(self.in_flight),
            human(MAX_IN_FLIGHT_SPANS as f64),
            mb(self.baselines),
            human(self.edges)
        );
    }
}
