//! Who caused a window's excess: root classes beyond their learned share, client
//! populations and users behind a large part of the calls.

use stormwatch_baseline::{BaselineStore, Distribution};
use stormwatch_model::{Contributor, Edge, RootClass};

use super::EdgeWindow;

/// Root classes whose calls exceed their learned share (with their share of the excess), then
/// the client populations and the authenticated users that made at least a tenth of the calls.
pub(super) fn attribute(
    counts: &EdgeWindow,
    edge: Edge,
    entries: u64,
    store: &BaselineStore,
) -> (Vec<Contributor>, Option<RootClass>) {
    let mut excesses: Vec<(RootClass, u64)> = counts
        .by_class
        .top()
        .into_iter()
        .map(|(class, calls)| {
            let expected = store
                .window_classes()
                .get(&(class, edge))
                .map_or(0.0, |d: &Distribution| d.mean() * entries as f64 / 1000.0);
            (class, calls.saturating_sub(expected.round() as u64))
        })
        .filter(|(_, excess)| *excess > 0)
        .collect();
    excesses.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let total: u64 = excesses.iter().map(|(_, e)| e).sum();
    let top_class = excesses.first().map(|(class, _)| *class);
    let mut contributors: Vec<Contributor> = excesses
        .iter()
        .take(3)
        .map(|(class, excess)| Contributor { name: format!("entry {class}"), share: share(*excess, total) })
        .collect();
    let unflagged = counts.calls.saturating_sub(counts.flagged_calls);
    for (population, calls) in counts.by_client.top().into_iter().take(3) {
        let part = share(calls, unflagged);
        if part >= 0.1 {
            contributors.push(Contributor { name: format!("clients {population}"), share: part });
        }
    }
    for (user, calls) in counts.by_user.top().into_iter().take(3) {
        let part = share(calls, unflagged);
        if part >= 0.1 {
            contributors.push(Contributor { name: format!("user {user}"), share: part });
        }
    }
    (contributors, top_class)
}

pub(super) fn share(part: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        part as f64 / total as f64
    }
}
