//! How fast a callee answers lately against how fast it usually does.
//!
//! Time amplification judges the work a request caused against what requests of its class
//! usually cause. A database that slows down for everyone (a backup, a vacuum, a noisy
//! neighbour) makes every request's work rise at once: that is a latency incident, not one
//! request class abusing a channel. The per-trace cost detector stretches its thresholds by the
//! callee's slowdown, so only work beyond what the slower callee explains is an anomaly. The
//! estimate is a geometric mean (of `ln(1 + microseconds)`) whose every step is clipped
//! ([`PACE_STEP_CLIP`]): a call far slower (or faster) than the pace moves it as much as one
//! twice as slow, so the calls of one request class scanning a table, a few in every dozen the
//! callee answers, stretch the thresholds that judge them by a few percent (unclipped, by 1.6x
//! on the real stack of issue 20, where that hid the scans), while a callee slower for every
//! caller still shows within [`PACE_MIN_OBSERVATIONS`] calls.
//!
//! A database keeps two paces, one for its reads and one for its writes ([`PaceLane`]):
//! writes wait on the commit log's flushes and on row locks that reads never take, so under a
//! crowd of buyers the `UPDATE`s of one hot row slow down many times while thousands of fast
//! reads keep the database's overall pace where it was (seen on the real stack of issue 20).

use stormwatch_model::{Node, NodeKind, Sym};

/// What keeps one pace: a callee (a service, or a database, cache, queue or peer by name), and
/// for a database, its reads apart from its writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PaceLane {
    /// The callee's name.
    pub callee: Sym,
    /// What the callee is.
    pub kind: NodeKind,
    /// The database calls that write ([`writes`]); false for every other callee.
    pub writes: bool,
}

impl PaceLane {
    /// The lane a call to `node` is paced in.
    pub fn of(node: &Node) -> PaceLane {
        let writes = node.kind == NodeKind::Database && writes(node.operation.as_str());
        PaceLane { callee: node.service, kind: node.kind, writes }
    }
}

/// Whether a normalised statement (or a bare operation name) writes: it starts with `INSERT`,
/// `UPDATE`, `DELETE`, `MERGE`, `UPSERT`, `REPLACE`, `TRUNCATE`, `COPY` or `COMMIT`, in any
/// case. A `WITH` whose body writes counts as a read: rare, and reads are the default.
pub fn writes(statement: &str) -> bool {
    const WRITES: [&str; 9] =
        ["INSERT", "UPDATE", "DELETE", "MERGE", "UPSERT", "REPLACE", "TRUNCATE", "COPY", "COMMIT"];
    let verb = statement.trim_start().split(|c: char| !c.is_ascii_alphabetic()).next().unwrap_or("");
    WRITES.iter().any(|w| verb.eq_ignore_ascii_case(w))
}

/// Calls the recent pace averages over (its exponential weighting's span).
pub const PACE_RECENT_CALLS: f64 = 16.0;
/// Event time the usual pace averages over while the callee answers at its usual pace (its
/// exponential weighting's time constant), whatever the call rate.
pub const PACE_USUAL_NANOS: u64 = 10 * 60 * 1_000_000_000;
/// While the callee is slower than [`PACE_SLOWED`], the usual pace follows this many times
/// more slowly: a slowdown of an hour is still a slowdown, not the new usual, while a lasting
/// change of pace becomes usual within a day.
pub const PACE_SLOWED_INERTIA: u64 = 16;
/// A slowdown beyond this factor holds the usual pace back ([`PACE_SLOWED_INERTIA`]).
pub const PACE_SLOWED: f64 = 1.5;
/// Observations before a pace is trusted; until then the slowdown is 1.
pub const PACE_MIN_OBSERVATIONS: u64 = 64;
/// The most one call moves a pace, as a difference of `ln(1 + microseconds)` from it: a call
/// counts at most as twice (or half) as slow as the pace, whatever it took. With
/// [`PACE_RECENT_CALLS`], the recent pace follows a callee ten times slower for everyone
/// within about 55 calls.
pub const PACE_STEP_CLIP: f64 = std::f64::consts::LN_2;

/// The recent and usual call time of one callee.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Pace {
    recent: f64,
    usual: f64,
    observations: u64,
    last_unix_nano: u64,
}

impl Pace {
    /// Learns one call time (microseconds) at event time `at`; a value that is not a finite
    /// number is ignored.
    pub fn observe(&mut self, micros: f64, at: u64) {
        if !micros.is_finite() {
            return;
        }
        let value = (1.0 + micros.max(0.0)).ln();
        // `slowdown() > PACE_SLOWED`, without the exponential.
        let slowed = self.observations >= PACE_MIN_OBSERVATIONS && self.recent - self.usual > PACE_SLOWED.ln();
        self.observations += 1;
        let seen = self.observations as f64;
        // The first calls set both paces (a plain mean); then each step is clipped.
        let step = |from: f64| {
            if self.observations <= PACE_MIN_OBSERVATIONS {
                value - from
            } else {
                (value - from).clamp(-PACE_STEP_CLIP, PACE_STEP_CLIP)
            }
        };
        self.recent += step(self.recent) / seen.min(PACE_RECENT_CALLS);
        // The usual pace then follows at a rate set by event time, not by calls.
        let weight = if self.observations <= PACE_MIN_OBSERVATIONS {
            1.0 / seen
        } else {
            let span = if slowed { PACE_USUAL_NANOS * PACE_SLOWED_INERTIA } else { PACE_USUAL_NANOS };
            (at.saturating_sub(self.last_unix_nano) as f64 / span as f64).min(1.0)
        };
        self.usual += step(self.usual) * weight;
        self.last_unix_nano = self.last_unix_nano.max(at);
    }

    /// The callee's usual time per call, microseconds (a geometric mean); `None` until
    /// [`PACE_MIN_OBSERVATIONS`] calls were seen.
    pub fn usual_micros(&self) -> Option<f64> {
        (self.observations >= PACE_MIN_OBSERVATIONS).then(|| self.usual.exp() - 1.0)
    }

    /// How many times slower than usual the callee answers lately: at least 1, and 1 until
    /// [`PACE_MIN_OBSERVATIONS`] calls were seen.
    pub fn slowdown(&self) -> f64 {
        let gap = self.recent - self.usual;
        if self.observations < PACE_MIN_OBSERVATIONS || gap <= 0.0 {
            return 1.0;
        }
        gap.exp()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Calls 10 ms of event time apart.
    const STEP: u64 = 10_000_000;

    fn jittered(i: u64, typical: f64) -> f64 {
        // 0.5x to 1.5x, deterministic.
        typical * (0.5 + (i.wrapping_mul(2_654_435_761) % 1000) as f64 / 1000.0)
    }

    #[test]
    fn a_callee_slowing_for_everyone_shows_and_one_slow_call_barely_does() {
        let mut pace = Pace::default();
        let mut at = 0;
        let mut calls = |pace: &mut Pace, count: u64, typical: f64| {
            for i in 0..count {
                at += STEP;
                pace.observe(jittered(i, typical), at);
            }
        };
        calls(&mut pace, 5_000, 700.0);
        assert!(pace.slowdown() < 1.3, "ordinary jitter: {}", pace.slowdown());
        // One scanning query of 40 ms among ordinary calls.
        pace.observe(40_000.0, 5_000 * STEP);
        calls(&mut pace, 15, 700.0);
        assert!(pace.slowdown() < 1.5, "one slow call: {}", pace.slowdown());
        // Every call ten times slower.
        calls(&mut pace, 200, 7_000.0);
        let slowed = pace.slowdown();
        assert!((6.0..14.0).contains(&slowed), "everyone slower: {slowed}");
        // An hour-long slowdown is still one...
        calls(&mut pace, 360_000, 7_000.0);
        assert!(pace.slowdown() > 4.0, "held back while slowed: {}", pace.slowdown());
        // ... and the pace returns once the callee does.
        calls(&mut pace, 100, 700.0);
        assert!(pace.slowdown() < 1.3, "recovered: {}", pace.slowdown());
    }

    /// The scanning search of the real stack (issue 20): a read of 25 to 70 ms where about
    /// 1 ms is usual, one in every dozen reads the database answers. Unclipped, the recent
    /// pace rose to 1.6x and more right after scans, stretching the very thresholds that
    /// judge them; clipped, it stays within a few percent, and the same database ten times
    /// slower for everyone still shows within the calls a pace needs to be trusted.
    #[test]
    fn a_minority_of_slow_calls_barely_moves_the_pace() {
        let mut pace = Pace::default();
        let mut at = 0;
        for i in 0..5_000u64 {
            at += STEP;
            pace.observe(jittered(i, 1_000.0), at);
        }
        let mut worst: f64 = 1.0;
        for i in 0..2_400u64 {
            at += STEP;
            let scan = i % 12 == 0;
            pace.observe(if scan { 25_000.0 + (i % 5) as f64 * 10_000.0 } else { jittered(i, 1_000.0) }, at);
            worst = worst.max(pace.slowdown());
        }
        assert!(worst < 1.2, "the scans stretched the pace to {worst:.2}x");
        for i in 0..PACE_MIN_OBSERVATIONS {
            at += STEP;
            pace.observe(jittered(i, 10_000.0), at);
        }
        assert!(pace.slowdown() > 7.0, "everyone ten times slower: {:.2}x", pace.slowdown());
    }

    #[test]
    fn a_databases_writes_keep_their_own_pace_and_other_callees_one() {
        let db = |statement: &str| Node {
            service: Sym::new("postgresql:shop"),
            operation: Sym::new(statement),
            kind: NodeKind::Database,
        };
        let update = PaceLane::of(&db("UPDATE stock SET available = available - ? WHERE product_id = ?"));
        assert!(update.writes);
        assert_eq!(update, PaceLane::of(&db("insert into shares (wishlist_id) values (?)")));
        assert_eq!(update, PaceLane::of(&db("COMMIT")));
        let read = PaceLane::of(&db("SELECT available FROM stock WHERE product_id = ?"));
        assert!(!read.writes);
        assert_eq!(read, PaceLane::of(&db("  with recent as (select 1) select * from recent")));
        assert_eq!(read, PaceLane::of(&db("UPDATES_LOG")), "a whole word, not a prefix");
        assert_ne!(update, read);
        let cache = Node { service: Sym::new("redis"), operation: Sym::new("SET"), kind: NodeKind::Cache };
        assert!(!PaceLane::of(&cache).writes, "only a database's writes wait on its commit log");
        let service = Node::service(Sym::new("inventory"), Sym::new("POST /reserve"));
        assert_eq!(
            PaceLane::of(&service),
            PaceLane { callee: Sym::new("inventory"), kind: NodeKind::Service, writes: false }
        );
    }

    #[test]
    fn a_young_pace_and_bad_values_say_nothing() {
        let mut pace = Pace::default();
        for i in 0..PACE_MIN_OBSERVATIONS - 1 {
            pace.observe(1_000.0, i * STEP);
        }
        pace.observe(f64::NAN, 0);
        pace.observe(f64::INFINITY, 0);
        assert_eq!(pace.slowdown(), 1.0);
        pace.observe(-5.0, 0);
        assert_eq!(pace.slowdown(), 1.0, "negative times are zero, and the pace was 1000 µs");
    }
}
