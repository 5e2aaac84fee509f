//! The space-saving heavy-hitter sketch windows attribute calls with.

use serde::{Deserialize, Serialize};

/// The space-saving heavy-hitter sketch (Metwally et al.): at most `capacity` keys; a new key
/// evicts the smallest and inherits its count, so heavy hitters are never missed and counts
/// are overestimated by at most the smallest count.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SpaceSaving<K> {
    capacity: usize,
    entries: Vec<(K, u64)>,
}

impl<K: Eq + Clone> SpaceSaving<K> {
    /// An empty sketch of at most `capacity` keys.
    pub fn new(capacity: usize) -> Self {
        SpaceSaving { capacity: capacity.max(1), entries: Vec::new() }
    }

    /// Counts `count` more for `key`.
    pub fn add(&mut self, key: &K, count: u64) {
        if let Some(entry) = self.entries.iter_mut().find(|(k, _)| k == key) {
            entry.1 += count;
        } else if self.entries.len() < self.capacity {
            self.entries.push((key.clone(), count));
        } else if let Some(smallest) = self.entries.iter_mut().min_by_key(|(_, c)| *c) {
            *smallest = (key.clone(), smallest.1 + count);
        }
    }

    /// Folds another sketch in (space-saving summaries merge by adding counts: heavy hitters of
    /// either stay, counts stay overestimates).
    pub fn merge(&mut self, other: &SpaceSaving<K>) {
        for (key, count) in &other.entries {
            self.add(key, *count);
        }
    }

    /// Keys by count, largest first.
    pub fn top(&self) -> Vec<(K, u64)> {
        let mut entries = self.entries.clone();
        entries.sort_by_key(|entry| std::cmp::Reverse(entry.1));
        entries
    }
}
