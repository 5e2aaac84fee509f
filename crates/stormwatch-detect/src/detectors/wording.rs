//! A per-trace finding in words: the sentence, the limits it broke and which baseline set
//! them.

use stormwatch_baseline::{ClassScope, RequestMetric};
use stormwatch_model::{AlertKind, Contributor, Edge, Node, RootClass};

use super::judge::{Ancestor, Basis, Judgement, BORROWED_FACTOR, NEVER_SEEN_FACTOR};
use super::DetectConfig;
use crate::features::TraceFeatures;
use crate::Finding;

/// Where the request came in, unless the caller itself is the entry point.
fn entry_suffix(entry: Option<RootClass>, caller: &Node) -> String {
    match entry {
        Some(class) if class.service == caller.service && class.operation == caller.operation => String::new(),
        Some(class) => format!(", in a request entering at {class}"),
        None => ", in a request with no known entry point".into(),
    }
}

pub(crate) fn number(value: f64) -> String {
    if value.fract() == 0.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}

/// A finding of a per-trace detector, before the one-incident rule and its wording.
pub(super) struct Pending {
    pub(super) kind: AlertKind,
    pub(super) edge: Option<Edge>,
    pub(super) metric: Option<RequestMetric>,
    pub(super) observed: u64,
    pub(super) unit: &'static str,
    /// `observed` and the judgement's figures in units of the reported one (1000: microseconds
    /// reported in milliseconds).
    pub(super) scale: f64,
    /// Said after the limits, when the judgement allowed for something (a slower callee).
    pub(super) allowance: Option<String>,
    pub(super) judgement: Judgement,
}

impl Pending {
    /// The finding as reported, with its sentence and severity.
    pub(super) fn finish(self, features: &TraceFeatures, config: &DetectConfig) -> Finding {
        let Judgement { expected, threshold, samples, since, basis } = self.judgement;
        let (observed, expected, threshold) =
            (self.observed as f64 / self.scale, expected / self.scale, threshold / self.scale);
        let entry = features.root_class;
        let mut limits = limits(basis, expected, threshold, samples);
        if let Some(allowance) = &self.allowance {
            limits = format!("{limits}; {allowance}");
        }
        let explanation = self.sentence(entry, observed, &limits);
        let from = match basis {
            Basis::Own | Basis::OwnUnder => None,
            Basis::Borrowed(scope, _) => Some(scope.to_string()),
            Basis::Unprecedented => Some(ClassScope::System.to_string()),
        };
        let contributors = if matches!(self.kind, AlertKind::CostAmplification | AlertKind::EgressAmplification) {
            requester(features)
        } else {
            Vec::new()
        };
        Finding::judged(self.kind, observed, expected, threshold, self.unit, config)
            .caused_by(contributors)
            .on(self.edge)
            .entering(entry)
            .of(self.metric)
            .shown_by(vec![features.trace_id])
            .during(features.start_unix_nano, features.end_unix_nano)
            .against(samples, since, from)
            .explained(explanation)
    }

    /// What happened, in one sentence ending with the limits it broke.
    fn sentence(&self, entry: Option<RootClass>, observed: f64, limits: &str) -> String {
        match (self.kind, self.edge, self.metric) {
            (AlertKind::EgressAmplification, Some(edge), _) if edge.from.is_clients() => format!(
                "One request entering at {} sent {} kB back to its client ({limits}).",
                entry.map_or_else(|| "an unknown entry point".into(), |c| c.to_string()),
                number(observed)
            ),
            (AlertKind::EgressAmplification, Some(edge), _) => format!(
                "One request entering at {} made {} return {} {} to {} ({limits}).",
                entry.map_or_else(|| "an unknown entry point".into(), |c| c.to_string()),
                edge.to,
                number(observed),
                edge.to.kind.payload_unit().shown(),
                edge.from
            ),
            (AlertKind::CostAmplification, Some(edge), _) => format!(
                "One request entering at {} spent {} ms in calls from {} to {} ({limits}).",
                entry.map_or_else(|| "an unknown entry point".into(), |c| c.to_string()),
                number(observed),
                edge.from,
                edge.to
            ),
            (AlertKind::NPlusOne, Some(edge), _) => format!(
                "{} ran `{}` on {} {} times under one `{}` span ({limits}){}.",
                edge.from.service,
                edge.to.operation,
                edge.to.service,
                self.observed,
                edge.from.operation,
                entry_suffix(entry, &edge.from)
            ),
            (AlertKind::FanoutAmplification, Some(edge), _) => format!(
                "{} called {} {} times under one parent span ({limits}){}.",
                edge.from,
                edge.to,
                self.observed,
                entry_suffix(entry, &edge.from)
            ),
            (_, Some(edge), _) => format!(
                "One request entering at {} made {} calls from {} to {} ({limits}).",
                entry.map_or_else(|| "an unknown entry point".into(), |c| c.to_string()),
                self.observed,
                edge.from,
                edge.to
            ),
            (_, None, metric) => format!(
                "One request entering at {} caused {} {} ({limits}).",
                entry.map_or_else(|| "an unknown entry point".into(), |c| c.to_string()),
                self.observed,
                match metric {
                    Some(RequestMetric::DbCalls) => "database calls",
                    Some(RequestMetric::Services) => "distinct services",
                    _ => "spans",
                }
            ),
        }
    }
}

/// Who a time or bytes finding's excess is attributed to: the request's class, its client
/// population and its user, each with all of it (one request caused it).
pub(crate) fn requester(features: &TraceFeatures) -> Vec<Contributor> {
    let whole = |name: String| Contributor { name, share: 1.0 };
    let mut contributors: Vec<Contributor> =
        features.root_class.map(|c| whole(format!("entry {c}"))).into_iter().collect();
    contributors.extend(features.client.map(|client| whole(format!("clients {client}"))));
    contributors.extend(features.user.map(|user| whole(format!("user {user}"))));
    contributors
}

/// The limits a finding broke, and which baseline set them.
fn limits(basis: Basis, expected: f64, threshold: f64, samples: u64) -> String {
    match basis {
        Basis::Own => format!("normally {}, alert above {}", number(expected), number(threshold)),
        Basis::OwnUnder => format!("normally under {}, alert above {}", number(expected), number(threshold)),
        Basis::Unprecedented => format!(
            "never seen in the whole system: every request of the system, normally {}, never more than {} in {} \
             requests; alert above {NEVER_SEEN_FACTOR}x that",
            number(expected),
            number(threshold / NEVER_SEEN_FACTOR),
            samples
        ),
        Basis::Borrowed(scope, own) => format!(
            "judged against {scope}, as this {} has only {own} {} of history: normally {}, alert above {} \
             ({BORROWED_FACTOR}x its threshold)",
            match scope {
                Ancestor::Class(_) => "entry",
                Ancestor::Edge(_) => "edge",
            },
            match scope {
                Ancestor::Class(_) => "requests",
                Ancestor::Edge(_) => "parent spans",
            },
            number(expected),
            number(threshold)
        ),
    }
}
