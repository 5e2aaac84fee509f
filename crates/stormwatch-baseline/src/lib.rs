//! Learned baselines: what each edge and each root class normally does.
//!
//! This crate owns the streaming statistics ([`Distribution`]), the bounded store of them
//! keyed by edge and root class ([`BaselineStore`]), and the versioned snapshot under
//! `models/`. It never decides what is anomalous (stormwatch-detect does) and never touches
//! the network; its only I/O is the snapshot file.

#![warn(missing_docs)]

mod distribution;
pub mod inspect;
mod pace;
mod seasonal;
mod snapshot;
mod store;
mod subspace;

pub use distribution::{
    Distribution, TailCeiling, HOLD_FROM_SAMPLES, LATEST_UNIX_NANO, RELEASE_HOURS, TAIL_GROWTH_PER_DAY,
    TAIL_STABLE_SAMPLES,
};
pub use pace::{
    writes, Pace, PaceLane, PACE_MIN_OBSERVATIONS, PACE_RECENT_CALLS, PACE_SLOWED, PACE_SLOWED_INERTIA, PACE_STEP_CLIP,
    PACE_USUAL_NANOS,
};
pub use seasonal::DailyProfile;
pub use snapshot::{
    decode_snapshot, encode_snapshot, load_snapshot, write_snapshot, write_snapshot_document, SnapshotError,
    SNAPSHOT_FILE, SNAPSHOT_FORMAT, SNAPSHOT_VERSION,
};
pub use store::{
    BaselineStore, Changed, ClassScope, EdgeScope, RequestMetric, StoreStats, Table, WindowMetric, EVICT_IDLE_NANOS,
};
pub use subspace::SubspaceModel;
