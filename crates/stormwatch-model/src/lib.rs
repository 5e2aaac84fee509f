//! The vocabulary of stormwatch: ids, spans, nodes, edges, root classes and alerts.
//!
//! This crate owns plain values and their formatting. It must never do I/O, spawn threads or
//! depend on a runtime: every other crate builds on it and tests it without sockets.

#![warn(missing_docs)]

mod alert;
pub mod builder;
mod graph;
mod ids;
mod span;
mod symbol;
mod time;

pub use alert::{
    rounded, Alert, AlertBaseline, AlertEdge, AlertKind, AlertNode, AlertTargetNode, AlertWindow, Contributor,
    Severity, ALERT_SCHEMA, FIGURE_DECIMALS, SCORE_DECIMALS,
};
pub use graph::{
    Edge, EdgeName, EdgeNameError, Node, NodeKind, NodeName, PayloadUnit, RootClass, MAX_EDGE_NAME_READINGS,
};
pub use ids::{IdError, SpanId, TraceId};
pub use span::{Links, Remote, Span, SpanKind, UNKNOWN_SERVICE};
pub use symbol::{
    clean_name, is_unsafe_char, Cardinality, Cleaned, Dimension, DimensionState, Sym, NAME_OVERHEAD, OVERFLOW,
    TRUNCATED,
};
pub use time::{parse_rfc3339, rfc3339, wall_clock_nanos};

/// A stable 64-bit FNV-1a hash, used where a hash must not change between runs or releases
/// (fingerprints, alert ids). `std`'s hasher is randomly seeded and may change.
pub fn stable_hash(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in part.iter() {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        // Separator so ("ab","c") and ("a","bc") differ.
        hash ^= 0xff;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// The client population of an address: /16 for IPv4, /64 for IPv6; anything else (already a
/// population, or not an address) unchanged.
pub fn client_population(address: &str) -> String {
    if let Ok(v4) = address.parse::<std::net::Ipv4Addr>() {
        let [a, b, _, _] = v4.octets();
        return format!("{a}.{b}.0.0/16");
    }
    if let Ok(v6) = address.parse::<std::net::Ipv6Addr>() {
        let s = v6.segments();
        return format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3]);
    }
    address.to_string()
}
