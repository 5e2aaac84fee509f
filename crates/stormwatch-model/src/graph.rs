//! Nodes, edges and root classes: the keys every baseline is learned under.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::Sym;

/// What a node is. Services are instrumented; the rest are virtual nodes derived from the
/// attributes of client spans.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeKind {
    Service,
    Database,
    Cache,
    Queue,
    Peer,
}

impl NodeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeKind::Service => "service",
            NodeKind::Database => "database",
            NodeKind::Cache => "cache",
            NodeKind::Queue => "queue",
            NodeKind::Peer => "peer",
        }
    }

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
}

/// (service, operation). For virtual nodes `service` is the database, queue or peer name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Node {
    pub service: Sym,
    pub operation: Sym,
    pub kind: NodeKind,
}

impl Node {
    pub fn service(service: Sym, operation: Sym) -> Node {
        Node { service, operation, kind: NodeKind::Service }
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
    pub from: Node,
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
    pub service: Sym,
    pub operation: Sym,
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
