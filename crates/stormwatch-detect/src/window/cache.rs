//! `cache_bypass`: database reads per cache lookup (the miss ratio) beside a cache far beyond
//! the fallback edge's window baseline.

use stormwatch_baseline::WindowMetric;
use stormwatch_model::{AlertKind, Contributor, Edge};

use super::attribution::share;
use super::{excess, thousandths, CacheWindow, Judged, Judging, Pending};
use crate::detectors::judge as judge_value;

/// Judges the reads on the fallback edge `database` per lookup of its cache in the window: a
/// finding, or what is learned.
pub(super) fn judge(judging: &Judging<'_>, database: Edge, counts: &CacheWindow, judged: &mut Judged) {
    // Every lookup of the cache in the window, hits included: the cache edge's calls.
    let lookups = judging.window.edges.get(&counts.cache).map_or(0, |edge| edge.calls);
    if lookups == 0 {
        return;
    }
    let ratio = thousandths(counts.database_calls, lookups);
    let baseline = judging.store.windows().get(&(WindowMetric::CacheMissRatio, database));
    match judge_value(baseline, ratio, &judging.rules) {
        Some(judgement) if excess(counts.database_calls, &judgement, lookups) >= judging.config.min_excess => {
            let total: u64 = counts.by_class.iter().map(|(_, n)| n).sum();
            let mut by_class = counts.by_class.clone();
            by_class.sort_by_key(|entry| std::cmp::Reverse(entry.1));
            let contributors = by_class
                .iter()
                .filter(|(_, n)| *n > 0)
                .take(3)
                .map(|(class, n)| Contributor { name: format!("entry {class}"), share: share(*n, total) })
                .collect();
            judged.pending.push(Pending {
                kind: AlertKind::CacheBypass,
                edge: counts.cache,
                metric: WindowMetric::CacheMissRatio,
                value: ratio,
                sentence: format!(
                    "{} fell back to {} `{}` {} times for {} {} lookups in {} s",
                    counts.cache.from,
                    database.to.service,
                    database.to.operation,
                    counts.database_calls,
                    lookups,
                    counts.cache.to.service,
                    judging.seconds()
                ),
                judgement,
                exemplars: counts.miss_examples.clone(),
                contributors,
                top_class: by_class.first().map(|(class, _)| *class),
                fallback: Some(database),
                hourly: false,
            });
        }
        Some(_) => {}
        None => judged.learn.push((WindowMetric::CacheMissRatio, database, ratio)),
    }
}
