//! Throttling per fingerprint: the first finding of an incident becomes an alert at once;
//! repeats within the throttle window (event time) are folded into one summary alert that
//! carries their count and exemplars, sent when the window closes. A storm of ten thousand
//! amplified requests becomes a handful of alerts.

use std::collections::BTreeMap;

use stormwatch_model::{
    rfc3339, rounded, stable_hash, Alert, AlertBaseline, AlertEdge, AlertNode, AlertTargetNode, AlertWindow,
    Contributor, Node, RootClass, TraceId, ALERT_SCHEMA, FIGURE_DECIMALS, SCORE_DECIMALS,
};

use crate::Finding;

const MAX_EXEMPLARS: usize = 5;

/// The stable identity of what is anomalous: kind + edge (+ root class for request-level
/// kinds, + the total for request totals). 16 hex chars.
pub fn fingerprint(finding: &Finding) -> String {
    let mut parts: Vec<&[u8]> = vec![finding.kind.as_str().as_bytes()];
    if let Some(edge) = &finding.edge {
        for node in [&edge.from, &edge.to] {
            parts.extend([
                node.service.as_str().as_bytes(),
                node.operation.as_str().as_bytes(),
                node.kind.as_str().as_bytes(),
            ]);
        }
    }
    let per_request = matches!(
        finding.kind,
        stormwatch_model::AlertKind::RequestAmplification | stormwatch_model::AlertKind::NewEdge
    );
    if per_request {
        if let Some(class) = &finding.entry {
            parts.push(class.service.as_str().as_bytes());
            parts.push(class.operation.as_str().as_bytes());
            parts.push(class.query_shape.map_or(&b""[..], |q| q.as_str().as_bytes()));
        }
    }
    if let Some(metric) = finding.metric {
        parts.push(metric.as_str().as_bytes());
    }
    format!("{:016x}", stable_hash(&parts))
}

struct Incident {
    opened_at: u64,
    /// Repeats since the alert that opened the incident.
    repeats: u64,
    /// The strongest repeat, reported in the summary.
    worst: Option<Finding>,
    exemplars: Vec<TraceId>,
    first_repeat_start: u64,
    last_repeat_end: u64,
}

/// Open incidents by fingerprint.
pub struct Throttle {
    window_nanos: u64,
    open: BTreeMap<String, Incident>,
}

impl std::fmt::Debug for Throttle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Throttle").finish_non_exhaustive()
    }
}

impl Throttle {
    /// Folds repeats within `window_nanos` of event time; 0 emits every finding.
    pub fn new(window_nanos: u64) -> Throttle {
        Throttle { window_nanos, open: BTreeMap::new() }
    }

    /// Incidents currently being throttled.
    pub fn open_incidents(&self) -> usize {
        self.open.len()
    }

    /// Event time the oldest open incident opened at: its summary may still report evidence
    /// from then on.
    pub fn oldest_open_incident(&self) -> Option<u64> {
        self.open.values().map(|incident| incident.opened_at).min()
    }

    /// Offers a finding; an alert is appended when it opens a new incident.
    pub fn offer(&mut self, finding: Finding, now_wall_nano: u64, out: &mut Vec<Alert>) {
        let fingerprint = fingerprint(&finding);
        if self.window_nanos == 0 {
            out.push(to_alert(&finding, fingerprint, 1, finding.exemplars.clone(), now_wall_nano));
            return;
        }
        match self.open.get_mut(&fingerprint) {
            Some(incident) => {
                if incident.repeats == 0 {
                    incident.first_repeat_start = finding.start_unix_nano;
                }
                incident.repeats += 1;
                incident.first_repeat_start = incident.first_repeat_start.min(finding.start_unix_nano);
                incident.last_repeat_end = incident.last_repeat_end.max(finding.end_unix_nano);
                for trace in &finding.exemplars {
                    if incident.exemplars.len() < MAX_EXEMPLARS && !incident.exemplars.contains(trace) {
                        incident.exemplars.push(*trace);
                    }
                }
                if incident.worst.as_ref().is_none_or(|worst| finding.score > worst.score) {
                    incident.worst = Some(finding);
                }
            }
            None => {
                out.push(to_alert(&finding, fingerprint.clone(), 1, finding.exemplars.clone(), now_wall_nano));
                self.open.insert(
                    fingerprint,
                    Incident {
                        opened_at: finding.end_unix_nano,
                        repeats: 0,
                        worst: None,
                        exemplars: Vec::new(),
                        first_repeat_start: 0,
                        last_repeat_end: 0,
                    },
                );
            }
        }
    }

    /// Closes incidents whose window ended by event time `watermark`, appending summaries.
    pub fn expire(&mut self, watermark: u64, now_wall_nano: u64, out: &mut Vec<Alert>) {
        let window = self.window_nanos;
        let expired: Vec<String> = self
            .open
            .iter()
            .filter(|(_, incident)| incident.opened_at.saturating_add(window) <= watermark)
            .map(|(fingerprint, _)| fingerprint.clone())
            .collect();
        for fingerprint in expired {
            if let Some(incident) = self.open.remove(&fingerprint) {
                summarize(fingerprint, incident, now_wall_nano, out);
            }
        }
    }

    /// Closes every incident (shutdown, end of replay).
    pub fn flush(&mut self, now_wall_nano: u64, out: &mut Vec<Alert>) {
        for (fingerprint, incident) in std::mem::take(&mut self.open) {
            summarize(fingerprint, incident, now_wall_nano, out);
        }
    }
}

fn summarize(fingerprint: String, incident: Incident, now_wall_nano: u64, out: &mut Vec<Alert>) {
    if let Some(mut worst) = incident.worst {
        worst.start_unix_nano = incident.first_repeat_start;
        worst.end_unix_nano = incident.last_repeat_end;
        worst.explanation = format!(
            "Repeated {} more {} since the first alert; worst: {}",
            incident.repeats,
            if incident.repeats == 1 { "time" } else { "times" },
            worst.explanation
        );
        out.push(to_alert(&worst, fingerprint, incident.repeats, incident.exemplars, now_wall_nano));
    }
}

fn node_doc(node: &Node) -> AlertNode {
    AlertNode { service: node.service.to_string(), operation: node.operation.to_string(), query_keys: Vec::new() }
}

fn entry_doc(class: &RootClass) -> AlertNode {
    AlertNode {
        service: class.service.to_string(),
        operation: class.operation.to_string(),
        query_keys: class.query_shape.map(|q| q.as_str().split('&').map(String::from).collect()).unwrap_or_default(),
    }
}

/// The alert a finding becomes: where its figures are rounded ([`FIGURE_DECIMALS`]).
fn to_alert(finding: &Finding, fingerprint: String, count: u64, exemplars: Vec<TraceId>, now_wall_nano: u64) -> Alert {
    // Deterministic id: the same evidence gives the same id, so consumers can de-duplicate
    // redeliveries and a replay reproduces its ids.
    let start = finding.start_unix_nano.to_be_bytes();
    let end = finding.end_unix_nano.to_be_bytes();
    let count_bytes = count.to_be_bytes();
    let id_parts: [&[u8]; 4] = [fingerprint.as_bytes(), &start, &end, &count_bytes];
    let first_exemplar = exemplars.first().map_or([0u8; 16], |t| t.0);
    let id = format!("{:016x}{:016x}", stable_hash(&id_parts), stable_hash(&[&first_exemplar, &count_bytes]));
    Alert {
        schema: ALERT_SCHEMA.into(),
        id,
        fingerprint,
        kind: finding.kind,
        severity: finding.severity,
        detected_at: rfc3339(now_wall_nano),
        window: AlertWindow { start: rfc3339(finding.start_unix_nano), end: rfc3339(finding.end_unix_nano) },
        entry: finding.entry.as_ref().map(entry_doc),
        edge: finding.edge.map(|edge| AlertEdge {
            from: node_doc(&edge.from),
            to: AlertTargetNode {
                service: edge.to.service.to_string(),
                operation: edge.to.operation.to_string(),
                kind: edge.to.kind.as_str().into(),
            },
        }),
        observed: rounded(finding.observed, FIGURE_DECIMALS),
        expected: rounded(finding.expected, FIGURE_DECIMALS),
        threshold: rounded(finding.threshold, FIGURE_DECIMALS),
        unit: finding.unit.into(),
        score: rounded(finding.score, SCORE_DECIMALS),
        count,
        exemplar_trace_ids: exemplars.iter().map(|t| t.to_string()).collect(),
        contributors: finding
            .contributors
            .iter()
            .map(|c| Contributor { name: c.name.clone(), share: rounded(c.share, FIGURE_DECIMALS) })
            .collect(),
        explanation: finding.explanation.clone(),
        baseline: AlertBaseline {
            samples: finding.baseline_samples,
            since: rfc3339(finding.baseline_since_unix_nano),
            from: finding.baseline_from.clone(),
        },
    }
}

#[cfg(test)]
mod tests {
    use stormwatch_model::{AlertKind, Contributor, Severity, TraceId};

    use super::*;
    use crate::DetectConfig;

    fn finding(observed: f64, at: u64) -> Finding {
        Finding::judged(
            AlertKind::CorrelatedStorm,
            observed,
            1.0 / 3.0,
            19.599_4,
            "residual_spe",
            &DetectConfig::default(),
        )
        .shown_by(vec![TraceId([at as u8; 16])])
        .caused_by(vec![Contributor { name: "edge a -> b".into(), share: 2.0 / 3.0 }])
        .during(at, at + 1)
        .explained(format!("residual {observed}"))
    }

    #[test]
    fn figures_are_rounded_once_when_the_alert_is_made() {
        let mut out = Vec::new();
        Throttle::new(0).offer(finding(23.171_75, 1), 0, &mut out);
        let alert = &out[0];
        assert_eq!((alert.observed, alert.expected, alert.threshold), (23.172, 0.333, 19.599));
        assert_eq!((alert.score, alert.severity), (1.18, Severity::Warning));
        assert_eq!(alert.contributors[0].share, 0.667);
        assert_eq!(alert.explanation, "residual 23.17175", "the sentence is the detector's own");
    }

    #[test]
    fn a_summary_reports_the_worst_repeat_by_its_unrounded_score() {
        let (mut throttle, mut out) = (Throttle::new(100), Vec::new());
        throttle.offer(finding(30.0, 1), 0, &mut out);
        // Two repeats whose scores are equal to two decimals: the larger one is the worst.
        throttle.offer(finding(30.0001, 2), 0, &mut out);
        throttle.offer(finding(30.0004, 3), 0, &mut out);
        throttle.flush(0, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!((out[1].count, out[1].observed), (2, 30.0));
        assert!(out[1].explanation.ends_with("worst: residual 30.0004"), "{}", out[1].explanation);
        assert_eq!(out[1].exemplar_trace_ids.len(), 2);
    }
}
