//! A lone slow request is latency, not an attack.
//!
//! A per-trace `cost_amplification` of warning severity says a request's calls on an edge took
//! far longer than its class's usual. A scanning query does that request after request; a
//! commit that waited on a disk flush, a lock or a pause does it once. So such a finding waits
//! for a second one of the same root class on the same edge within [`CONFIRM_NANOS`] of event
//! time: the second is raised with the first as an exemplar, and every further one inside the
//! period passes at once. A critical one (at `critical_factor` times the threshold) stands
//! alone, as do bytes and rows (a response's size does not jitter) and every other kind.
//! A lone finding is still an anomaly: its time is neither learned nor window evidence.

use std::collections::HashMap;

use stormwatch_model::{AlertKind, Edge, RootClass, Severity, TraceId};

use crate::Finding;

/// How long a lone time finding waits for a second one (event time).
pub const CONFIRM_NANOS: u64 = 60 * 1_000_000_000;
/// Most (root class, edge) keys waiting at once; past it, findings are raised alone (a flood
/// of distinct slow keys is no jitter).
pub const MAX_WAITING: usize = 10_000;

/// Time findings waiting for a second request, by (root class, edge).
#[derive(Debug, Default)]
pub struct Confirmations {
    /// When the last time finding of the key was seen, and its trace.
    seen: HashMap<(Option<RootClass>, Edge), (u64, TraceId)>,
    /// Lone findings held back: no second request came (yet).
    pub lone: u64,
}

impl Confirmations {
    /// The findings that stand, of a trace that ended at `at`: a lone time finding of warning
    /// severity is held back until a second one confirms it.
    pub fn confirmed(&mut self, findings: Vec<Finding>, at: u64) -> Vec<Finding> {
        if !findings.iter().any(needs_confirmation) {
            return findings;
        }
        if self.seen.len() >= MAX_WAITING {
            self.seen.retain(|_, (seen, _)| at.saturating_sub(*seen) <= CONFIRM_NANOS);
        }
        findings.into_iter().filter_map(|finding| self.confirm(finding, at)).collect()
    }

    fn confirm(&mut self, mut finding: Finding, at: u64) -> Option<Finding> {
        let Some(edge) = finding.edge.filter(|_| needs_confirmation(&finding)) else { return Some(finding) };
        let trace = finding.exemplars.first().copied().unwrap_or(TraceId([0; 16]));
        let key = (finding.entry, edge);
        match self.seen.insert(key, (at, trace)) {
            Some((seen, first)) if at.saturating_sub(seen) <= CONFIRM_NANOS => {
                if first != trace && !finding.exemplars.contains(&first) {
                    finding.exemplars.push(first);
                }
                let seconds = at.saturating_sub(seen) as f64 / 1e9;
                finding.explanation.push_str(&format!(" Another request did the same {seconds:.0} s before."));
                Some(finding)
            }
            _ if self.seen.len() > MAX_WAITING => {
                self.seen.remove(&key);
                Some(finding)
            }
            _ => {
                self.lone += 1;
                None
            }
        }
    }
}

/// A per-request time finding of warning severity.
fn needs_confirmation(finding: &Finding) -> bool {
    finding.kind == AlertKind::CostAmplification
        && finding.unit == "work_ms_per_request"
        && finding.severity == Severity::Warning
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DetectConfig;
    use stormwatch_model::{Node, Sym};

    const SECOND: u64 = 1_000_000_000;

    fn slow(trace: u8, class: &str, observed: f64) -> Finding {
        let edge = Edge {
            from: Node::service(Sym::new("catalog"), Sym::new("GET /search")),
            to: Node {
                service: Sym::new("postgresql"),
                operation: Sym::new("SELECT"),
                kind: stormwatch_model::NodeKind::Database,
            },
        };
        let class = RootClass { service: Sym::new("web"), operation: Sym::new(class), query_shape: None };
        let mut finding = Finding::judged(
            AlertKind::CostAmplification,
            observed,
            2.0,
            25.0,
            "work_ms_per_request",
            &DetectConfig::default(),
        )
        .on(Some(edge))
        .entering(Some(class))
        .shown_by(vec![TraceId([trace; 16])]);
        finding.explanation = "slow.".into();
        finding
    }

    #[test]
    fn a_lone_slow_request_is_held_back_and_a_second_confirms_it() {
        let mut confirmations = Confirmations::default();
        assert!(confirmations.confirmed(vec![slow(1, "GET /search", 48.0)], 10 * SECOND).is_empty());
        // Another class, or the same one after the period: lone again.
        assert!(confirmations.confirmed(vec![slow(2, "POST /share", 48.0)], 20 * SECOND).is_empty());
        assert!(confirmations.confirmed(vec![slow(3, "POST /share", 48.0)], 90 * SECOND).is_empty());
        assert_eq!(confirmations.lone, 3);
        let confirmed = confirmations.confirmed(vec![slow(4, "POST /share", 40.0)], 100 * SECOND);
        assert_eq!(confirmed.len(), 1);
        assert_eq!(confirmed[0].exemplars, vec![TraceId([4; 16]), TraceId([3; 16])]);
        assert!(
            confirmed[0].explanation.ends_with("Another request did the same 10 s before."),
            "{}",
            confirmed[0].explanation
        );
        // Inside the period every further one passes.
        assert_eq!(confirmations.confirmed(vec![slow(5, "POST /share", 40.0)], 101 * SECOND).len(), 1);
    }

    #[test]
    fn a_critical_one_stands_alone_and_other_kinds_pass() {
        let mut confirmations = Confirmations::default();
        // Four times the threshold: critical.
        assert_eq!(confirmations.confirmed(vec![slow(1, "GET /search", 400.0)], SECOND).len(), 1);
        let mut bytes = slow(2, "GET /search", 48.0);
        bytes.kind = AlertKind::EgressAmplification;
        bytes.unit = "kilobytes_per_request";
        assert_eq!(confirmations.confirmed(vec![bytes], SECOND).len(), 1);
        assert_eq!(confirmations.lone, 0);
    }

    #[test]
    fn waiting_keys_are_bounded() {
        let mut confirmations = Confirmations::default();
        for n in 0..MAX_WAITING as u64 + 10 {
            let class = format!("GET /r{n}");
            let at = n * 1_000;
            let _ = confirmations.confirmed(vec![slow(1, &class, 48.0)], at);
        }
        assert!(confirmations.seen.len() <= MAX_WAITING, "{}", confirmations.seen.len());
        // Past the bound, findings are raised alone.
        assert_eq!(confirmations.lone, MAX_WAITING as u64);
    }
}
