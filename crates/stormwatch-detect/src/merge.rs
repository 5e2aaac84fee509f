//! Windows merged across engines: several engines in one Kafka consumer group each see only
//! their partitions' share of the traffic, which is enough for per-trace detection (a trace
//! lives in one partition) but not for window detection (an attack spread thinly over every
//! partition is only visible whole). So each engine ships its closed windows as [`Partials`];
//! one engine, the merger, folds the shares of each window into one ([`Window::merge`]) and
//! judges that, with the window baselines and the correlated detector.
//!
//! The merger judges a window once every partition of the input topic is accounted for: the
//! engine that last claimed the partition has closed the window (its `closed_through` passed
//! the window's end) or has nothing in flight (`idle`, as stream processors treat idle
//! sources). A partition nobody claims (its engine died and Kafka has not reassigned it yet)
//! holds the window until `timeout` of wall time has passed since the window's first share
//! arrived; then it is judged with what is there, and counted.
//!
//! Shares are idempotent per engine: a second share of one window from the same sender (an
//! engine restarted under its static id re-reads what it had not committed, and may close a
//! window it had already shipped) is dropped, since the first one was complete. Shares of a
//! window already judged are late, dropped and counted. Pure: values in, values out.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::window::Window;

/// `format` of a [`Partials`] message.
pub const PARTIALS_FORMAT: &str = "stormwatch.window_partials";
/// `version` of a [`Partials`] message this engine reads and writes.
pub const PARTIALS_VERSION: u32 = 1;

/// One engine's closed windows and its progress, as sent to the merger.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Partials {
    /// Always [`PARTIALS_FORMAT`].
    pub format: String,
    /// [`PARTIALS_VERSION`] of the sender.
    pub version: u32,
    /// The sending engine (its static group instance id, or an id generated at start).
    pub sender: String,
    /// The input partitions it consumes.
    pub partitions: Vec<i32>,
    /// Partitions of the input topic.
    pub partitions_total: u32,
    /// Every window of this sender that ends at or before this event time has been shipped.
    pub closed_through_unix_nano: u64,
    /// Nothing in flight: the merger need not wait for this sender.
    pub idle: bool,
    /// Its windows closed since the last message.
    pub windows: Vec<Window>,
}

impl Partials {
    /// An empty message from `sender`, which consumes `partitions` of `partitions_total`.
    pub fn new(sender: &str, partitions: Vec<i32>, partitions_total: u32, closed_through: u64) -> Partials {
        Partials {
            format: PARTIALS_FORMAT.to_string(),
            version: PARTIALS_VERSION,
            sender: sender.to_string(),
            partitions,
            partitions_total,
            closed_through_unix_nano: closed_through,
            idle: false,
            windows: Vec::new(),
        }
    }

    /// The message as sent on the windows topic (JSON).
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("window partials always serialise")
    }

    /// Decodes a message, refusing other formats and versions by name.
    pub fn decode(bytes: &[u8]) -> Result<Partials, PartialsError> {
        #[derive(Deserialize)]
        struct Header {
            format: String,
            version: u32,
        }
        let header: Header = serde_json::from_slice(bytes).map_err(PartialsError::NotPartials)?;
        if header.format != PARTIALS_FORMAT {
            return Err(PartialsError::Format(header.format));
        }
        if header.version != PARTIALS_VERSION {
            return Err(PartialsError::Version(header.version));
        }
        serde_json::from_slice(bytes).map_err(PartialsError::Corrupt)
    }
}

/// Why a windows-topic message is not window partials this engine reads.
#[derive(Debug, thiserror::Error)]
pub enum PartialsError {
    /// Not JSON, or no `format` and `version`.
    #[error("not a {PARTIALS_FORMAT} message: {0}")]
    NotPartials(serde_json::Error),
    /// Another format.
    #[error("format {0:?}, expected {PARTIALS_FORMAT:?}")]
    Format(String),
    #[error(
        "{PARTIALS_FORMAT} version {0}, this engine reads version {PARTIALS_VERSION}: run one release across the group"
    )]
    /// Another version.
    Version(u32),
    /// The right format and version, but not a valid document.
    #[error("corrupt {PARTIALS_FORMAT} message: {0}")]
    Corrupt(serde_json::Error),
}

/// Counters of the merger, cumulative.
#[derive(Clone, Debug, Default)]
pub struct MergeStats {
    /// Messages received.
    pub partials: u64,
    /// Windows judged.
    pub windows_merged: u64,
    /// Windows judged after the timeout, without every partition accounted for.
    pub windows_timed_out: u64,
    /// Shares of windows already judged.
    pub late_partials: u64,
    /// Second shares of one window from one sender.
    pub duplicate_partials: u64,
}

struct Open {
    window: Window,
    senders: Vec<String>,
    /// Wall time the first share arrived.
    first_seen: u64,
}

struct Progress {
    closed_through: u64,
    idle: bool,
}

/// Folds the shares of each window and says when a window is whole.
pub struct WindowMerger {
    /// Wall nanoseconds a window waits for partitions nobody accounts for.
    timeout_nanos: u64,
    top_k: usize,
    open: BTreeMap<u64, Open>,
    /// Input partition -> the sender that last claimed it.
    owners: HashMap<i32, String>,
    senders: HashMap<String, Progress>,
    partitions_total: u32,
    /// End of the newest window judged.
    merged_through: u64,
    stats: MergeStats,
}

impl std::fmt::Debug for WindowMerger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WindowMerger").finish_non_exhaustive()
    }
}

impl WindowMerger {
    /// A merger that judges a window once every partition's share arrived, or `timeout_nanos`
    /// of event time after it ended; sketches keep `top_k` keys.
    pub fn new(timeout_nanos: u64, top_k: usize) -> WindowMerger {
        WindowMerger {
            timeout_nanos,
            top_k,
            open: BTreeMap::new(),
            owners: HashMap::new(),
            senders: HashMap::new(),
            partitions_total: 0,
            merged_through: 0,
            stats: MergeStats::default(),
        }
    }

    /// Its counters.
    pub fn stats(&self) -> &MergeStats {
        &self.stats
    }

    /// Windows waiting for shares.
    pub fn open_windows(&self) -> usize {
        self.open.len()
    }

    /// Wall time the oldest waiting window's first share arrived.
    pub fn oldest_open(&self) -> Option<u64> {
        self.open.values().map(|o| o.first_seen).min()
    }

    /// End of the newest window judged: shares of windows ending at or before it are late.
    pub fn merged_through(&self) -> u64 {
        self.merged_through
    }

    /// Forgets everything (this engine no longer merges; the next merger re-reads).
    pub fn clear(&mut self) {
        *self = WindowMerger::new(self.timeout_nanos, self.top_k);
    }

    /// Takes one engine's message, at wall time `now`.
    pub fn offer(&mut self, partials: Partials, now: u64) {
        self.stats.partials += 1;
        self.partitions_total = self.partitions_total.max(partials.partitions_total);
        for partition in &partials.partitions {
            self.owners.insert(*partition, partials.sender.clone());
        }
        let progress =
            self.senders.entry(partials.sender.clone()).or_insert(Progress { closed_through: 0, idle: false });
        progress.closed_through = progress.closed_through.max(partials.closed_through_unix_nano);
        progress.idle = partials.idle;
        for window in partials.windows {
            if window.end <= self.merged_through {
                self.stats.late_partials += 1;
                continue;
            }
            match self.open.get_mut(&window.start) {
                Some(open) if open.senders.contains(&partials.sender) => self.stats.duplicate_partials += 1,
                Some(open) => {
                    open.window.merge(window, self.top_k);
                    open.senders.push(partials.sender.clone());
                }
                None => {
                    let senders = vec![partials.sender.clone()];
                    self.open.insert(window.start, Open { window, senders, first_seen: now });
                }
            }
        }
    }

    /// Windows that are whole (or waited out their timeout) by wall time `now`, oldest first.
    pub fn due(&mut self, now: u64) -> Vec<Window> {
        let mut due = Vec::new();
        while let Some((end, first_seen)) = self.open.values().next().map(|o| (o.window.end, o.first_seen)) {
            let covered = self.covered(end);
            let timed_out = now.saturating_sub(first_seen) >= self.timeout_nanos;
            if !covered && !timed_out {
                break;
            }
            let Some((_, open)) = self.open.pop_first() else { break };
            if !covered {
                self.stats.windows_timed_out += 1;
            }
            self.stats.windows_merged += 1;
            self.merged_through = self.merged_through.max(open.window.end);
            due.push(open.window);
        }
        due
    }

    /// Whether every input partition's engine has closed windows ending at `end` (or is idle).
    fn covered(&self, end: u64) -> bool {
        self.partitions_total > 0
            && (0..self.partitions_total as i32).all(|partition| {
                self.owners
                    .get(&partition)
                    .and_then(|sender| self.senders.get(sender))
                    .is_some_and(|progress| progress.idle || progress.closed_through >= end)
            })
    }
}

#[cfg(test)]
mod tests;
