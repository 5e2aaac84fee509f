//! Nodes, edges and root classes: the keys every baseline is learned under.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::Sym;

/// What a node is. Services are instrumented; the rest are virtual nodes derived from the
/// attributes of client spans.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeKind {
    /// An instrumented service.
    Service,
    /// A database, named by `db.system` and namespace.
    Database,
    /// A cache (Redis, Memcached, ...).
    Cache,
    /// A message queue's destination.
    Queue,
    /// An uninstrumented peer (`peer.service`, `server.address`).
    Peer,
}

impl NodeKind {
    /// The kind's name in alerts and the API (`database`).
    pub fn as_str(self) -> &'static str {
        match self {
            NodeKind::Service => "service",
            NodeKind::Database => "database",
            NodeKind::Cache => "cache",
            NodeKind::Queue => "queue",
            NodeKind::Peer => "peer",
        }
    }

    /// The kind named `text`, if any.
    pub fn parse(text: &str) -> Option<NodeKind> {
        Some(match text {
            "service" => NodeKind::Service,
            "database" => NodeKind::Database,
            "cache" => NodeKind::Cache,
            "queue" => NodeKind::Queue,
            "peer" => NodeKind::Peer,
            _ => return None,
        })
    }

    /// Databases and caches answer statements: repeats under one parent are N+1 loops.
    pub fn is_datastore(self) -> bool {
        matches!(self, NodeKind::Database | NodeKind::Cache)
    }

    /// What a callee of this kind returns is counted in: rows for a database
    /// (`db.response.returned_rows`), bytes for anything else.
    pub fn payload_unit(self) -> PayloadUnit {
        match self {
            NodeKind::Database => PayloadUnit::Rows,
            _ => PayloadUnit::Bytes,
        }
    }
}

/// The unit a call's payload is counted in ([`crate::Span::bytes`]): bytes, or for a database
/// the rows it returned. A query that over-fetches a table shows in its rows where no span
/// reports bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PayloadUnit {
    /// Bytes, reported in (decimal) kilobytes.
    Bytes,
    /// Rows.
    Rows,
}

impl PayloadUnit {
    /// `amount` for people: `3.2 MB`, `120 B`, `48213 rows`.
    pub fn human(self, amount: u64) -> String {
        const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
        if self == PayloadUnit::Rows {
            return format!("{amount} rows");
        }
        let mut value = amount as f64;
        let mut unit = 0;
        while value >= 1000.0 && unit + 1 < UNITS.len() {
            value /= 1000.0;
            unit += 1;
        }
        if unit == 0 {
            format!("{amount} B")
        } else {
            format!("{value:.1} {}", UNITS[unit])
        }
    }

    /// The reported unit per `per` (`request`, `call`): `kilobytes_per_request`,
    /// `rows_per_call`.
    pub fn per(self, per: &str) -> &'static str {
        match (self, per) {
            (PayloadUnit::Bytes, "request") => "kilobytes_per_request",
            (PayloadUnit::Bytes, _) => "kilobytes_per_call",
            (PayloadUnit::Rows, "request") => "rows_per_request",
            (PayloadUnit::Rows, _) => "rows_per_call",
        }
    }

    /// Counted units per reported unit: 1000 bytes to the kilobyte, 1 row to the row.
    pub fn scale(self) -> f64 {
        match self {
            PayloadUnit::Bytes => 1_000.0,
            PayloadUnit::Rows => 1.0,
        }
    }

    /// The reported unit's name in a sentence: `kB`, `rows`.
    pub fn shown(self) -> &'static str {
        match self {
            PayloadUnit::Bytes => "kB",
            PayloadUnit::Rows => "rows",
        }
    }
}

/// (service, operation). For virtual nodes `service` is the database, queue or peer name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Node {
    /// The service, or for virtual nodes the database, cache, queue or peer name.
    pub service: Sym,
    /// The operation, or for datastores the normalised statement.
    pub operation: Sym,
    /// What the node is.
    pub kind: NodeKind,
}

impl Node {
    /// An instrumented service's operation.
    pub fn service(service: Sym, operation: Sym) -> Node {
        Node { service, operation, kind: NodeKind::Service }
    }

    /// Where requests come from outside the system: the caller on the pseudo-edge to an entry
    /// point, which carries what a request took in and gave back (`egress_amplification`).
    pub fn clients() -> Node {
        Node { service: Sym::new(CLIENTS), operation: Sym::new(""), kind: NodeKind::Peer }
    }

    /// Whether this is [`Node::clients`].
    pub fn is_clients(&self) -> bool {
        self.kind == NodeKind::Peer && self.service.as_str() == CLIENTS && self.operation.as_str().is_empty()
    }
}

/// The name of [`Node::clients`].
const CLIENTS: &str = "<clients>";

impl Edge {
    /// The pseudo-edge from outside the system to the entry point `class` came in through.
    pub fn entering(class: &RootClass) -> Edge {
        Edge { from: Node::clients(), to: Node::service(class.service, class.operation) }
    }
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} `{}`", self.service, self.operation)
    }
}

/// Caller node -> callee node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Edge {
    /// The caller.
    pub from: Node,
    /// The callee.
    pub to: Node,
}

impl fmt::Display for Edge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {}", self.from, self.to)
    }
}

/// The entry point a request came in through: service, operation (method and route
/// template) and the shape of its query (which parameter keys were present, never values).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RootClass {
    /// The service the request entered.
    pub service: Sym,
    /// Its operation (method and route template).
    pub operation: Sym,
    /// The sorted, `&`-joined query-parameter keys, when the request had any.
    pub query_shape: Option<Sym>,
}

impl fmt::Display for RootClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} `{}", self.service, self.operation)?;
        if let Some(shape) = self.query_shape {
            write!(f, "?{shape}")?;
        }
        f.write_str("`")
    }
}

/// A node as people name it: service and operation (the name does not say the kind).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NodeName {
    /// The service (for virtual nodes the database, queue or peer name).
    pub service: Sym,
    /// The operation.
    pub operation: Sym,
}

impl From<Node> for NodeName {
    fn from(node: Node) -> NodeName {
        NodeName { service: node.service, operation: node.operation }
    }
}

/// Readings an edge name may have before it is refused as ambiguous.
pub const MAX_EDGE_NAME_READINGS: usize = 8;

/// An edge as alerts, `stormwatch baseline list` and the tuning file name it
/// (``reviews `GET /reviews` -> postgresql `SELECT 1` ``), parsed once into interned names,
/// so that matching an edge against it neither formats nor allocates.
///
/// Each side is `service `operation``, the service ending at the first `` ` `` after a space.
/// An operation may itself contain `` ` -> ``: then the name has several readings, and it
/// matches an edge any of them names (at most [`MAX_EDGE_NAME_READINGS`]). The callee's kind
/// is not part of the name: it matches whatever the kind. Shown (`Display` and `Debug`) as its
/// text.
#[derive(Clone)]
pub struct EdgeName {
    text: String,
    readings: Vec<(NodeName, NodeName)>,
}

/// Why a text is not an edge name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EdgeNameError {
    /// Not of the form ``caller `operation` -> callee `operation` ``.
    Form,
    /// More than [`MAX_EDGE_NAME_READINGS`] ways to read it.
    Ambiguous(usize),
}

impl fmt::Display for EdgeNameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EdgeNameError::Form => {
                f.write_str("not an edge as alerts name it: caller `operation` -> callee `operation`")
            }
            EdgeNameError::Ambiguous(n) => write!(
                f,
                "an edge name with {n} readings (its operations contain \"` -> \"); at most \
                 {MAX_EDGE_NAME_READINGS} are allowed"
            ),
        }
    }
}

impl std::error::Error for EdgeNameError {}

/// `service `operation`` (with the closing backtick removed): the node it names.
fn node_name(text: &str) -> Option<NodeName> {
    let (service, operation) = text.split_once(" `")?;
    Some(NodeName { service: Sym::new(service), operation: Sym::new(operation) })
}

impl EdgeName {
    /// Reads `text` as an edge name.
    pub fn parse(text: &str) -> Result<EdgeName, EdgeNameError> {
        let body = text.strip_suffix('`').ok_or(EdgeNameError::Form)?;
        let splits: Vec<usize> = body.match_indices("` -> ").map(|(at, _)| at).collect();
        let candidates = splits.iter().filter(|&&at| body[..at].contains(" `") && body[at + 5..].contains(" `"));
        let count = candidates.clone().count();
        if count > MAX_EDGE_NAME_READINGS {
            return Err(EdgeNameError::Ambiguous(count));
        }
        let readings: Vec<(NodeName, NodeName)> =
            candidates.filter_map(|&at| Some((node_name(&body[..at])?, node_name(&body[at + 5..])?))).collect();
        if readings.is_empty() {
            return Err(EdgeNameError::Form);
        }
        Ok(EdgeName { text: text.to_string(), readings })
    }

    /// The name as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The caller and callee names it may stand for.
    pub fn readings(&self) -> &[(NodeName, NodeName)] {
        &self.readings
    }

    /// Whether it names `edge`.
    pub fn matches(&self, edge: &Edge) -> bool {
        let (from, to) = (NodeName::from(edge.from), NodeName::from(edge.to));
        self.readings.iter().any(|&(f, t)| f == from && t == to)
    }
}

impl fmt::Display for EdgeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for EdgeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.text, f)
    }
}

/// Edge names are equal, and ordered, as their text.
impl PartialEq for EdgeName {
    fn eq(&self, other: &EdgeName) -> bool {
        self.text == other.text
    }
}

impl Eq for EdgeName {}

impl PartialOrd for EdgeName {
    fn partial_cmp(&self, other: &EdgeName) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for EdgeName {
    fn cmp(&self, other: &EdgeName) -> std::cmp::Ordering {
        self.text.cmp(&other.text)
    }
}

impl std::str::FromStr for EdgeName {
    type Err = EdgeNameError;

    fn from_str(text: &str) -> Result<EdgeName, EdgeNameError> {
        EdgeName::parse(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge(from: (&str, &str), to: (&str, &str), kind: NodeKind) -> Edge {
        Edge {
            from: Node::service(Sym::new(from.0), Sym::new(from.1)),
            to: Node { service: Sym::new(to.0), operation: Sym::new(to.1), kind },
        }
    }

    #[test]
    fn an_edge_name_matches_the_edges_that_display_as_it() {
        let lookups = edge(("reviews", "GET /reviews"), ("postgresql", "SELECT `id` FROM `users`"), NodeKind::Database);
        let name = EdgeName::parse(&lookups.to_string()).unwrap();
        assert!(name.matches(&lookups));
        assert_eq!(name.to_string(), lookups.to_string());
        // Whatever the callee's kind; not another operation or caller.
        assert!(name.matches(&edge(
            ("reviews", "GET /reviews"),
            ("postgresql", "SELECT `id` FROM `users`"),
            NodeKind::Peer
        )));
        assert!(!name.matches(&edge(("reviews", "GET /reviews"), ("postgresql", "SELECT 1"), NodeKind::Database)));
        assert!(!name.matches(&edge(
            ("ratings", "GET /reviews"),
            ("postgresql", "SELECT `id` FROM `users`"),
            NodeKind::Database
        )));
    }

    #[test]
    fn an_operation_with_an_arrow_in_it_is_read_both_ways() {
        let odd = edge(("gateway", "GET /a` -> b `c"), ("db", "SELECT 1"), NodeKind::Database);
        let name = EdgeName::parse(&odd.to_string()).unwrap();
        assert_eq!(name.readings().len(), 2);
        assert!(name.matches(&odd));
        assert!(name.matches(&edge(("gateway", "GET /a"), ("b", "c` -> db `SELECT 1"), NodeKind::Service)));
        let many = format!("a `{}` -> b `c`", "x` -> y `z".repeat(MAX_EDGE_NAME_READINGS));
        assert_eq!(EdgeName::parse(&many), Err(EdgeNameError::Ambiguous(MAX_EDGE_NAME_READINGS + 1)));
    }

    #[test]
    fn texts_that_are_not_edges_are_refused() {
        for text in ["", "reviews `GET /reviews`", "reviews -> postgresql", "a `b` -> c `d", "a `b` -> c"] {
            assert_eq!(EdgeName::parse(text), Err(EdgeNameError::Form), "{text:?}");
        }
    }
}
