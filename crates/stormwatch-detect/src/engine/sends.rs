//! The engine's side of queue floods: a trace's findings on the edges into a queue are held
//! until the request's consumers' work is in ([`crate::queues`]).

use stormwatch_model::{Alert, AlertKind, NodeKind, Severity};

use super::Engine;
use crate::queues::is_about_a_queue;
use crate::{Finding, TraceFeatures};

impl Engine {
    /// A trace's findings: when one is on an edge into a queue, the strongest such is held
    /// until the request's consumers' work is in, and the trace's others are part of it (the
    /// flood's work in the trace itself); else they are offered now.
    pub(super) fn judge_sends(
        &mut self,
        features: &TraceFeatures,
        findings: Vec<Finding>,
        now: u64,
        out: &mut Vec<Alert>,
    ) {
        let sends = features.edges.iter().any(|e| e.edge.to.kind == NodeKind::Queue);
        let strongest = findings
            .iter()
            .enumerate()
            .filter(|(_, f)| sends && is_about_a_queue(f))
            // Held only where consumers are traced (tied back before, or in this very trace).
            .filter(|(_, f)| features.consumed.messages > 0 || f.edge.is_some_and(|e| self.queues.is_traced(&e.to)))
            .max_by(|(_, a), (_, b)| a.score.total_cmp(&b.score))
            .map(|(i, _)| i);
        let mut held = None;
        for (i, finding) in findings.into_iter().enumerate() {
            match strongest {
                Some(chosen) if chosen == i => held = Some(finding.caused_by(crate::detectors::requester(features))),
                Some(_) if !(finding.kind == AlertKind::NewEdge && finding.severity == Severity::Info) => {
                    self.stats.findings_in_held_floods += 1;
                }
                _ => self.offer(finding, now, out),
            }
        }
        let mut raised = Vec::new();
        self.queues.sent(features, held, &mut raised);
        for finding in raised {
            self.offer(finding, now, out);
        }
    }
}
