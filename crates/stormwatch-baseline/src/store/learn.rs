//! How a table learns one key's observations: looked up once, made room for when new (a full
//! table evicts young, idle baselines first), and listed among the store's changes.

use super::{Changes, Room, StoreStats, Table, EVICT_IDLE_NANOS, SWEEP_EVERY_NANOS};
use crate::inspect::RowKey;
use crate::Distribution;

/// A table's index among those that sweep ([`Room::last_sweeps_unix_nano`]), and how its key
/// names a row ([`RowKey`]).
type TableOf<K> = (usize, fn(K) -> RowKey);

/// [`observe`] of several values of one key, with one lookup while the key exists.
pub(super) fn observe_all<K: std::hash::Hash + Eq + Copy>(
    table: &mut Table<K>,
    key: K,
    values: &[u64],
    at: u64,
    (room, changes): (&mut Room, &mut Changes),
    of: TableOf<K>,
) {
    if let Some(distribution) = table.get_mut(&key) {
        for &value in values {
            distribution.observe(value, at);
        }
        changes.note(distribution, key, of.1);
        return;
    }
    // A new key: made room for (or refused) as one observation makes it, then the rest.
    let [first, rest @ ..] = values else { return };
    observe(table, key, *first, at, (&mut *room, &mut *changes), of, Distribution::observe);
    match table.get_mut(&key) {
        Some(distribution) => {
            for &value in rest {
                distribution.observe(value, at);
            }
        }
        None => room.stats.capped_observations += rest.len() as u64,
    }
}

pub(super) fn observe<K: std::hash::Hash + Eq + Copy>(
    table: &mut Table<K>,
    key: K,
    value: u64,
    at: u64,
    (room, changes): (&mut Room, &mut Changes),
    (table_index, row): TableOf<K>,
    learn: fn(&mut Distribution, u64, u64),
) {
    if let Some(distribution) = table.get_mut(&key) {
        learn(distribution, value, at);
        changes.note(distribution, key, row);
        return;
    }
    if table.len() >= room.max_keys {
        let evicted = room.stats.evicted_young;
        sweep(table, at, room.young_below, &mut room.last_sweeps_unix_nano[table_index], &mut room.stats);
        // Gone baselines: a reader's copy is listed anew.
        changes.all |= room.stats.evicted_young > evicted;
    }
    if table.len() < room.max_keys {
        let distribution = table.entry(key).or_default();
        learn(distribution, value, at);
        changes.note(distribution, key, row);
    } else {
        room.stats.capped_observations += 1;
    }
}

/// Evicts the young baselines of a full `table` idle for [`EVICT_IDLE_NANOS`] before `now`,
/// at most once per [`SWEEP_EVERY_NANOS`].
fn sweep<K>(table: &mut Table<K>, now: u64, young_below: u64, last_sweep_unix_nano: &mut u64, stats: &mut StoreStats) {
    if young_below == 0 || now < last_sweep_unix_nano.saturating_add(SWEEP_EVERY_NANOS) {
        return;
    }
    *last_sweep_unix_nano = now;
    let idle_before = now.saturating_sub(EVICT_IDLE_NANOS);
    let before = table.len();
    table.retain(|_, d| d.samples() >= young_below || d.last_seen_unix_nano() >= idle_before);
    stats.evicted_young += (before - table.len()) as u64;
}
