//! The engine thread's side of window sharing in a Kafka consumer group: ship this engine's
//! closed windows and progress to the windows topic, and, while this engine holds that
//! topic's partition, merge every engine's windows and judge them (see
//! `stormwatch_detect::merge` for the rules).
//!
//! At least once, end to end: partials go to the sink ahead of the input positions they
//! settle, so an input offset is committed only after its windows reached the windows topic;
//! a windows-topic offset is committed only after the windows it carried were judged and
//! their alerts delivered. A merger that dies is replaced by whichever engine Kafka assigns
//! the partition to, and that engine re-reads the partials not yet committed.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use stormwatch_baseline::BaselineStore;
use stormwatch_detect::{Engine, Partials, WindowMerger};
use stormwatch_io::kafka::source::GroupState;
use stormwatch_io::{Metrics, SourcePosition};
use stormwatch_model::Alert;

use stormwatch_model::wall_clock_nanos;

/// Decodes the group's shared snapshots (engine id, document) read from `topic`; one that does
/// not decode is skipped with a warning naming its engine.
pub fn decode_shared(snapshots: &[(String, Vec<u8>)], max_keys: usize, topic: &str) -> Vec<(String, BaselineStore)> {
    snapshots
        .iter()
        .filter_map(|(engine, bytes)| {
            let origin = std::path::PathBuf::from(format!("{topic} (engine {engine})"));
            match stormwatch_baseline::decode_snapshot(bytes, max_keys, &origin) {
                Ok(store) => Some((engine.clone(), store)),
                Err(error) => {
                    tracing::warn!(%error, "shared baseline snapshot skipped");
                    None
                }
            }
        })
        .collect()
}

/// How often an engine reports progress when it has no window to ship.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// Settings of window sharing.
#[derive(Debug)]
pub struct SharingOptions {
    /// This engine's name in the partials (its static instance id, or a generated one).
    pub sender: String,
    /// The consumer group's membership, as the input source sees it.
    pub group: Arc<GroupState>,
    /// Where partials go.
    pub topic: String,
    /// How long a window waits for a partition no live engine accounts for.
    pub merge_timeout: Duration,
    /// Keys each window sketch keeps when windows are merged.
    pub top_k: usize,
}

pub(crate) struct WindowSharing {
    options: SharingOptions,
    merger: WindowMerger,
    /// Windows-topic positions in order, with the end of the newest window they carried.
    pending: VecDeque<(SourcePosition, u64)>,
    last_shipped: Option<Instant>,
    shipped_through: u64,
    window_nanos: u64,
    /// Windows-topic messages that were not partials.
    malformed: u64,
}

impl WindowSharing {
    pub(crate) fn new(options: SharingOptions, window_nanos: u64) -> WindowSharing {
        let merger = WindowMerger::new(options.merge_timeout.as_nanos() as u64, options.top_k);
        WindowSharing {
            options,
            merger,
            pending: VecDeque::new(),
            last_shipped: None,
            shipped_through: 0,
            window_nanos,
            malformed: 0,
        }
    }

    /// Another engine's (or this one's) partials, read from the windows topic.
    pub(crate) fn receive(&mut self, payload: &[u8], position: SourcePosition) {
        let partials = match Partials::decode(payload) {
            Ok(partials) => partials,
            Err(error) => {
                self.malformed += 1;
                tracing::warn!(partition = position.partition, offset = position.offset, %error,
                    "windows topic: message skipped");
                self.pending.push_back((position, 0));
                return;
            }
        };
        let newest = partials.windows.iter().map(|w| w.end).max().unwrap_or(0);
        self.merger.offer(partials, wall_clock_nanos());
        self.pending.push_back((position, newest));
    }

    /// This engine's closed windows and progress, encoded for the windows topic, when there is
    /// something to ship or a heartbeat is due. `idle`: nothing in flight.
    pub(crate) fn ship(&mut self, engine: &mut Engine, idle: bool, metrics: &Metrics) -> Option<Vec<u8>> {
        let windows = engine.take_closed_windows();
        let closed_through = engine.windows_closed_through();
        let due = !windows.is_empty()
            || closed_through >= self.shipped_through.saturating_add(self.window_nanos)
            || self.last_shipped.is_none_or(|at| at.elapsed() >= HEARTBEAT);
        if !due {
            return None;
        }
        let group = &self.options.group;
        let partials = Partials {
            idle,
            windows,
            ..Partials::new(&self.options.sender, group.input_partitions(), group.partitions_total(), closed_through)
        };
        self.last_shipped = Some(Instant::now());
        self.shipped_through = closed_through;
        Metrics::add(&metrics.window_partials_sent_total, 1);
        Some(partials.encode())
    }

    pub(crate) fn topic(&self) -> &str {
        &self.options.topic
    }

    pub(crate) fn sender(&self) -> &str {
        &self.options.sender
    }

    /// While this engine merges: judges the windows that are whole. Otherwise forgets what it
    /// merged before (the new merger re-reads it).
    pub(crate) fn judge(&mut self, engine: &mut Engine, out: &mut Vec<Alert>, metrics: &Metrics) {
        if !self.options.group.merges_windows() {
            if self.merger.open_windows() > 0 || !self.pending.is_empty() {
                self.merger.clear();
                self.pending.clear();
            }
            return;
        }
        let due = self.merger.due(wall_clock_nanos());
        if !due.is_empty() {
            engine.judge_merged(due, out);
        }
        let stats = self.merger.stats();
        Metrics::set(&metrics.windows_merged_total, stats.windows_merged);
        Metrics::set(&metrics.window_merge_timeouts_total, stats.windows_timed_out);
        let dropped = stats.late_partials + stats.duplicate_partials + self.malformed;
        Metrics::set(&metrics.window_partials_dropped_total, dropped);
    }

    /// Windows-topic positions whose windows are judged (and no open incident may still
    /// summarise them): committable behind the alerts sent before.
    pub(crate) fn settled(&mut self, incidents_from: u64) -> Vec<SourcePosition> {
        let merged = self.merger.merged_through();
        let mut settled = Vec::new();
        while let Some((position, newest)) = self.pending.front() {
            if *newest > merged || incidents_from <= *newest {
                break;
            }
            settled.push(*position);
            self.pending.pop_front();
        }
        settled
    }
}

/// A new engine (nothing learned locally): the group's newest shared snapshot, with the window
/// baselines of the one that has the most window history. `None` when there is none (or it
/// cannot be read: the engine then learns from scratch, and says so).
pub(crate) fn restore_shared(brokers: &str, topic: &str, max_keys: usize) -> Option<BaselineStore> {
    let snapshots = match stormwatch_io::kafka::baselines::read_snapshots(brokers, topic, Duration::from_secs(60)) {
        Ok(snapshots) => snapshots,
        Err(error) => {
            tracing::warn!(%error, "the group's shared baselines were not read; learning from scratch");
            return None;
        }
    };
    let mut stores = decode_shared(&snapshots, max_keys, topic);
    let windows_from = stores.iter().enumerate().max_by_key(|(_, (_, s))| s.window_samples()).map(|(i, _)| i)?;
    let windows = stores.remove(windows_from);
    let newest = stores.iter().enumerate().max_by_key(|(_, (_, s))| s.watermark()).map(|(i, _)| i);
    let (from, mut store) = match newest {
        Some(i) if stores[i].1.watermark() > windows.1.watermark() => stores.swap_remove(i),
        _ => return Some(log_restored(topic, windows)),
    };
    tracing::info!(from = %windows.0, "window baselines restored from the group's topic");
    store.adopt_windows(windows.1);
    Some(log_restored(topic, (from, store)))
}

fn log_restored(topic: &str, (from, store): (String, BaselineStore)) -> BaselineStore {
    tracing::info!(
        %topic,
        from = %from,
        edges = store.edges_tracked(),
        windows = store.window_samples(),
        "no local snapshot: baselines restored from the group's shared snapshots"
    );
    store
}
