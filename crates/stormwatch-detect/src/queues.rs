//! Requests that flood a queue, judged with the work their messages caused.
//!
//! A request that sends messages is remembered (its class, client and user) for a while of
//! event time. The traces that consume its messages — a batch consumer's trace linking to it,
//! a consumer whose producer span was in the request's own trace — are tied back to it: their
//! work is added to its account, and windows count that work as the request's class's.
//!
//! The per-trace detectors judge a request's messages like any calls (the edge into the queue,
//! per parent span and per request). A finding on such an edge, into a queue whose consumers
//! were tied back before (else there is nothing to wait for), is *held* here rather than
//! raised at once, until the request's consumers went quiet (or `settle_max` of event time
//! passed), and is then raised as one `queue_amplification` alert naming the entry, the queue
//! and the work downstream of it.
//!
//! Bounded: at most [`MAX_SENDERS`] requests are remembered; past it the oldest is settled
//! early. Pure logic on event time, no clock, no I/O.

use std::collections::{HashMap, HashSet, VecDeque};

use stormwatch_model::{AlertKind, Node, NodeKind, RootClass, Sym, TraceId};

use crate::{Finding, TraceFeatures};

/// Most message-sending requests remembered at once (about 150 bytes each).
pub const MAX_SENDERS: usize = 100_000;

/// Most queues remembered as having traced consumers.
const MAX_TRACED_QUEUES: usize = 10_000;

/// Consumer traces kept as exemplars of a held finding.
const CONSUMER_EXEMPLARS: usize = 3;

/// Who sent messages, and what their consumers did so far.
struct Sender {
    class: Option<RootClass>,
    /// The queue it sent the most messages to.
    queue: Node,
    client: Option<Sym>,
    user: Option<Sym>,
    /// Event time the sending trace ended.
    end: u64,
    /// Messages it sent.
    sent: u64,
    /// Consumer spans tied back to it (links count each message they name).
    consumed: u64,
    /// Calls and their time, in the consumers' traces.
    calls: u64,
    work_micros: u64,
    traces: u64,
    /// Event time the latest consumer trace tied to it ended.
    last_consumed: u64,
    /// Event time reached when the latest consumer trace was tied to it (consumer traces
    /// complete a `trace_idle` after they end: quiet is judged on arrival).
    last_tied: u64,
    /// Calls and their time in its own trace, under consumer spans.
    in_trace_calls: u64,
    in_trace_work_micros: u64,
    /// A finding on its queue edges, waiting for the consumers' work.
    held: Option<Box<Finding>>,
    /// A finding was held for it: its consumers' work is the flood's, raised or not.
    flooded: bool,
    /// Findings of its consumers' traces that joined its held finding.
    folded: u64,
    consumer_traces: Vec<TraceId>,
}

/// The requester a consumer trace was tied back to: windows count its work as theirs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Requester {
    /// The sending request's root class.
    pub class: Option<RootClass>,
    /// Its client.
    pub client: Option<Sym>,
    /// Its user.
    pub user: Option<Sym>,
    /// The queue it sent the most messages to.
    pub queue: Node,
    /// Whether its messages were judged a flood: the consumer's work is part of that one
    /// alert, not evidence for windows.
    pub flooded: bool,
    /// Whether that flood's alert is still held: the consumer's findings can join it.
    pub holding: bool,
    /// The sending request's trace.
    pub trace: TraceId,
}

/// The requests that sent messages lately.
pub struct Queues {
    senders: HashMap<TraceId, Sender, foldhash::fast::RandomState>,
    /// Senders in arrival order (with their end), to settle and forget the oldest first.
    order: VecDeque<(u64, TraceId)>,
    /// Senders with a held finding (few): the only ones `settle` looks at.
    holding: Vec<TraceId>,
    /// Queues whose consumers were tied back at least once: only their findings are held (a
    /// queue whose consumers are not traced would only delay its alerts).
    traced: HashSet<Node>,
    capacity: usize,
    settle_idle: u64,
    settle_max: u64,
}

impl std::fmt::Debug for Queues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queues").field("senders", &self.senders.len()).finish_non_exhaustive()
    }
}

/// Whether a finding is about messages sent to a queue (held until the consumers' work is in).
pub fn is_about_a_queue(finding: &Finding) -> bool {
    finding.edge.is_some_and(|edge| edge.to.kind == NodeKind::Queue)
        && matches!(
            finding.kind,
            AlertKind::FanoutAmplification | AlertKind::NPlusOne | AlertKind::RequestAmplification
        )
}

impl Queues {
    /// A held finding is raised once its consumers were quiet for `settle_idle`, at the latest
    /// `settle_max` after the request ended (both event time); a request is remembered for
    /// `settle_max`, so consumers later than that count as requests of their own.
    pub fn new(settle_idle: u64, settle_max: u64) -> Queues {
        Queues::with_capacity(settle_idle, settle_max, MAX_SENDERS)
    }

    /// [`Queues::new`] remembering at most `capacity` requests.
    pub fn with_capacity(settle_idle: u64, settle_max: u64, capacity: usize) -> Queues {
        Queues {
            senders: HashMap::default(),
            order: VecDeque::new(),
            holding: Vec::new(),
            traced: HashSet::new(),
            capacity: capacity.max(1),
            settle_idle,
            settle_max: settle_max.max(settle_idle),
        }
    }

    /// Whether the consumers of `queue` were ever tied back: its findings are held for them.
    pub fn is_traced(&self, queue: &Node) -> bool {
        self.traced.contains(queue)
    }

    /// Requests remembered now.
    pub fn len(&self) -> usize {
        self.senders.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.senders.is_empty()
    }

    /// Ties a consumer trace back to the request that sent its messages (the first of its
    /// origins still remembered that has messages not yet tied): adds its work to that
    /// request's account and returns who it was.
    pub fn consumed(&mut self, features: &TraceFeatures, watermark: u64) -> Option<Requester> {
        let consumed = &features.consumed;
        let mut requester = None;
        for (origin, links) in &consumed.origins {
            // No more messages are tied to a request than it sent: a trace that links to a
            // flood it did not consume cannot hide its work in it.
            let Some(sender) = self.senders.get_mut(origin).filter(|s| s.consumed < s.sent) else { continue };
            sender.consumed += u64::from(*links);
            if requester.is_none() {
                // The work is counted once, for the first sender still remembered.
                sender.calls += consumed.calls;
                sender.work_micros = sender.work_micros.saturating_add(consumed.work_micros);
                sender.traces += 1;
                sender.last_consumed = sender.last_consumed.max(features.end_unix_nano);
                sender.last_tied = watermark;
                if self.traced.len() < MAX_TRACED_QUEUES {
                    self.traced.insert(sender.queue);
                }
                if sender.consumer_traces.len() < CONSUMER_EXEMPLARS && *origin != features.trace_id {
                    sender.consumer_traces.push(features.trace_id);
                }
                requester = Some(Requester {
                    class: sender.class,
                    client: sender.client,
                    user: sender.user,
                    queue: sender.queue,
                    flooded: sender.flooded,
                    holding: sender.held.is_some(),
                    trace: *origin,
                });
            }
        }
        requester
    }

    /// Remembers a request that sent messages (does nothing for one that sent none), with the
    /// strongest finding on its queue edges to raise once its consumers are done; a trace's
    /// late part sending more adds to the request already remembered.
    pub fn sent(&mut self, features: &TraceFeatures, held: Option<Finding>, out: &mut Vec<Finding>) {
        let queues = || features.edges.iter().filter(|e| e.edge.to.kind == NodeKind::Queue);
        let sent: u64 = queues().map(|e| e.calls).sum();
        let Some(queue) = queues().max_by_key(|e| e.calls).map(|e| e.edge.to) else {
            out.extend(held);
            return;
        };
        // Messages consumed within the trace are its own work already (and say its queue's
        // consumers are traced).
        let in_trace = features.consumed.messages.min(sent);
        if in_trace > 0 && self.traced.len() < MAX_TRACED_QUEUES {
            self.traced.insert(queue);
        }
        if let Some(sender) = self.senders.get_mut(&features.trace_id) {
            sender.sent += sent;
            sender.consumed += in_trace;
            sender.flooded |= held.is_some();
            if sender.held.is_none() && held.is_some() {
                self.holding.push(features.trace_id);
            }
            sender.held = stronger(sender.held.take(), held);
            return;
        }
        if self.senders.len() >= self.capacity {
            self.forget_oldest(out);
        }
        let sender = Sender {
            class: features.root_class,
            queue,
            client: features.client,
            user: features.user,
            end: features.end_unix_nano,
            sent,
            consumed: in_trace,
            calls: 0,
            work_micros: 0,
            traces: 0,
            last_consumed: 0,
            last_tied: 0,
            in_trace_calls: features.consumed.calls,
            in_trace_work_micros: features.consumed.work_micros,
            flooded: held.is_some(),
            folded: 0,
            held: held.map(Box::new),
            consumer_traces: Vec::new(),
        };
        if sender.held.is_some() {
            self.holding.push(features.trace_id);
        }
        self.senders.insert(features.trace_id, sender);
        self.order.push_back((features.end_unix_nano, features.trace_id));
    }

    /// Lets `findings` of a consumer's trace join the held finding of the request `trace` that
    /// sent its messages (the flood's work, judged as one); returns those it does not take
    /// (notes, or all when the request's finding was raised already or it has none).
    pub fn fold(&mut self, trace: TraceId, findings: Vec<Finding>) -> Vec<Finding> {
        let Some(sender) = self.senders.get_mut(&trace).filter(|s| s.held.is_some()) else { return findings };
        // Notes (a new edge) explain no excess: they stay what they are.
        let (notes, folded): (Vec<Finding>, Vec<Finding>) =
            findings.into_iter().partition(|f| f.severity == stormwatch_model::Severity::Info);
        sender.folded += folded.len() as u64;
        notes
    }

    /// Raises the held findings whose consumers are done by event time `watermark`, and
    /// forgets the requests remembered for `settle_max`.
    pub fn settle(&mut self, watermark: u64, out: &mut Vec<Finding>) {
        let (idle, max) = (self.settle_idle, self.settle_max);
        let senders = &mut self.senders;
        self.holding.retain(|trace| {
            let Some(sender) = senders.get_mut(trace).filter(|s| s.held.is_some()) else { return false };
            let quiet = sender.last_tied.saturating_add(idle) <= watermark;
            let done = sender.consumed >= sender.sent || (sender.traces > 0 && quiet);
            if done || sender.end.saturating_add(max) <= watermark {
                out.extend(raise(sender));
                return false;
            }
            true
        });
        while self.order.front().is_some_and(|(end, _)| end.saturating_add(max) <= watermark) {
            self.forget_oldest(out);
        }
    }

    /// Raises every held finding and forgets everything (shutdown, end of a replay).
    pub fn flush(&mut self, out: &mut Vec<Finding>) {
        while !self.order.is_empty() {
            self.forget_oldest(out);
        }
    }

    fn forget_oldest(&mut self, out: &mut Vec<Finding>) {
        if let Some((_, trace)) = self.order.pop_front() {
            if let Some(mut sender) = self.senders.remove(&trace) {
                out.extend(raise(&mut sender));
            }
        }
    }
}

/// The finding with the higher score.
fn stronger(a: Option<Box<Finding>>, b: Option<Finding>) -> Option<Box<Finding>> {
    match (a, b) {
        (Some(a), Some(b)) if b.score > a.score => Some(Box::new(b)),
        (a, b) => a.or(b.map(Box::new)),
    }
}

/// The held finding of `sender`, as the `queue_amplification` alert with its consumers' work.
fn raise(sender: &mut Sender) -> Option<Finding> {
    let mut finding = *sender.held.take()?;
    let sentence = finding.explanation.trim_end_matches('.');
    let (calls, work) = (sender.calls + sender.in_trace_calls, sender.work_micros + sender.in_trace_work_micros);
    let (own, traces) = (sender.in_trace_calls, sender.traces);
    let whose = match (own, traces) {
        (_, 0) => "all in its own trace".to_string(),
        (0, _) => format!("in {traces} traces of their own"),
        _ => format!("{own} in its own trace, {} in {traces} traces of their own", sender.calls),
    };
    let downstream = if own == 0 && traces == 0 {
        "no consumer's work was seen: none in its trace, no consumer's trace tied back to it".to_string()
    } else {
        format!(
            "their consumers then made {calls} calls taking {} ms of work ({whose})",
            crate::detectors::number(work as f64 / 1_000.0)
        )
    };
    let folded = match sender.folded {
        0 => String::new(),
        1 => "; a finding in a consumer's trace is part of this alert".to_string(),
        n => format!("; {n} findings in its consumers' traces are part of this alert"),
    };
    finding.explanation = format!("{sentence}: {} messages sent; {downstream}{folded}.", sender.sent);
    finding.kind = AlertKind::QueueAmplification;
    finding.exemplars.append(&mut sender.consumer_traces);
    finding.end_unix_nano = finding.end_unix_nano.max(sender.last_consumed);
    Some(finding)
}

#[cfg(test)]
mod tests;
