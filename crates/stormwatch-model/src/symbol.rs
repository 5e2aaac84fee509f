//! Interned strings. Service names, operations and statements repeat millions of times; each
//! is stored once and spans carry a 4-byte [`Sym`].
//!
//! The interner is process-wide and append-only, so what reaches it must be bounded: decoders
//! normalise statements, and intern names that come from the traffic through
//! [`Sym::bounded`], which holds each [`Dimension`] (services, operations, statements, ...) to a
//! limit. Past it, new names of that dimension become one overflow symbol,
//! [`OVERFLOW`], and are counted: a flood of invented names costs nothing, and is reported.

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;

use lasso::{Spur, ThreadedRodeo};

fn interner() -> &'static ThreadedRodeo {
    static INTERNER: OnceLock<ThreadedRodeo> = OnceLock::new();
    INTERNER.get_or_init(ThreadedRodeo::new)
}

/// An interned string. Cheap to copy, compare and hash; resolves to a `&'static str`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sym(Spur);

impl Sym {
    /// Interns `text`, allocating only the first time a string is seen.
    pub fn new(text: &str) -> Sym {
        Sym(interner().get_or_intern(text))
    }

    /// The interned text. Resolving through the shared interner takes a hash and a shard lock;
    /// each thread keeps the texts it resolved in a plain vector indexed by key instead (the
    /// interner is append-only, so an entry never goes stale).
    pub fn as_str(self) -> &'static str {
        thread_local! {
            static RESOLVED: std::cell::RefCell<Vec<Option<&'static str>>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        let index = self.id() as usize;
        RESOLVED.with(|resolved| {
            if let Some(Some(text)) = resolved.borrow().get(index) {
                return *text;
            }
            let text: &'static str = interner().resolve(&self.0);
            let mut resolved = resolved.borrow_mut();
            if resolved.len() <= index {
                resolved.resize(index + 1, None);
            }
            resolved[index] = Some(text);
            text
        })
    }

    /// Interns `text` as a name of `dimension`, unless that dimension is at its limit of
    /// distinct names: then [`OVERFLOW`] (counted). Names already interned cost nothing.
    pub fn bounded(dimension: Dimension, text: &str) -> Sym {
        CARDINALITY.intern(dimension, text)
    }

    /// The interning key: equal for equal text and cheap to compare, but ordered by first
    /// interning, which differs between runs. For grouping; never for output order (that is
    /// what `Ord`, by text, is for).
    pub fn id(self) -> u32 {
        lasso::Key::into_usize(self.0) as u32
    }
}

impl PartialOrd for Sym {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// Ordered by text, not by interning order, so sorted output is the same in every run.
impl Ord for Sym {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        if self.0 == other.0 {
            // Same key, same text: no lookups.
            return std::cmp::Ordering::Equal;
        }
        self.as_str().cmp(other.as_str())
    }
}

impl fmt::Display for Sym {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Sym {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

impl From<&str> for Sym {
    fn from(text: &str) -> Self {
        Sym::new(text)
    }
}

/// As its text: interned ids differ between processes, text does not.
impl serde::Serialize for Sym {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Sym {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Sym, D::Error> {
        let text = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        Ok(Sym::new(&text))
    }
}

/// What new names of a dimension at its limit become.
pub const OVERFLOW: &str = "<overflow>";

/// What the traffic names, each held to its own limit of distinct values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dimension {
    /// `service.name`.
    Service,
    /// Span names and routes: the operations of services, queues and peers.
    Operation,
    /// Normalised database and cache statements.
    Statement,
    /// Remote systems: database systems and names, queues, peer hosts.
    Peer,
    /// Entry query shapes (`?a=&b=`).
    QueryShape,
    /// Client populations (/16, /64) of entry requests.
    Client,
    /// `enduser.id` of entry requests.
    User,
}

const DEFAULT_LIMITS: [usize; 7] = [10_000, 100_000, 100_000, 10_000, 10_000, 100_000, 100_000];

impl Dimension {
    pub const ALL: [Dimension; 7] = [
        Dimension::Service,
        Dimension::Operation,
        Dimension::Statement,
        Dimension::Peer,
        Dimension::QueryShape,
        Dimension::Client,
        Dimension::User,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Dimension::Service => "services",
            Dimension::Operation => "operations",
            Dimension::Statement => "statements",
            Dimension::Peer => "peers",
            Dimension::QueryShape => "query_shapes",
            Dimension::Client => "clients",
            Dimension::User => "users",
        }
    }

    /// The default limit of distinct names.
    pub fn default_limit(self) -> usize {
        DEFAULT_LIMITS[self as usize]
    }

    /// Whether names of this dimension shape the call graph: a flood of them is an attack on
    /// the engine (clients and users are many by nature, and only counted).
    pub fn is_structural(self) -> bool {
        !matches!(self, Dimension::Client | Dimension::User)
    }
}

/// Distinct names interned and names folded into [`OVERFLOW`], per dimension.
pub struct Cardinality {
    limits: [AtomicUsize; 7],
    distinct: [AtomicUsize; 7],
    overflowed: [AtomicU64; 7],
}

/// One dimension's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DimensionState {
    pub dimension: Dimension,
    pub limit: usize,
    pub distinct: usize,
    pub overflowed: u64,
}

static CARDINALITY: Cardinality = Cardinality::new();

impl Cardinality {
    #[allow(clippy::new_without_default)]
    pub const fn new() -> Cardinality {
        Cardinality {
            limits: [
                AtomicUsize::new(DEFAULT_LIMITS[0]),
                AtomicUsize::new(DEFAULT_LIMITS[1]),
                AtomicUsize::new(DEFAULT_LIMITS[2]),
                AtomicUsize::new(DEFAULT_LIMITS[3]),
                AtomicUsize::new(DEFAULT_LIMITS[4]),
                AtomicUsize::new(DEFAULT_LIMITS[5]),
                AtomicUsize::new(DEFAULT_LIMITS[6]),
            ],
            distinct: [const { AtomicUsize::new(0) }; 7],
            overflowed: [const { AtomicU64::new(0) }; 7],
        }
    }

    /// The process-wide state [`Sym::bounded`] uses.
    pub fn global() -> &'static Cardinality {
        &CARDINALITY
    }

    pub fn set_limit(&self, dimension: Dimension, limit: usize) {
        self.limits[dimension as usize].store(limit, Ordering::Relaxed);
    }

    pub fn intern(&self, dimension: Dimension, text: &str) -> Sym {
        if let Some(key) = interner().get(text) {
            return Sym(key);
        }
        let index = dimension as usize;
        // Two threads interning the same new name may both count it: the limit errs low.
        if self.distinct[index].fetch_add(1, Ordering::Relaxed) < self.limits[index].load(Ordering::Relaxed) {
            Sym::new(text)
        } else {
            self.distinct[index].fetch_sub(1, Ordering::Relaxed);
            self.overflowed[index].fetch_add(1, Ordering::Relaxed);
            Sym::new(OVERFLOW)
        }
    }

    pub fn state(&self) -> Vec<DimensionState> {
        Dimension::ALL
            .into_iter()
            .map(|dimension| DimensionState {
                dimension,
                limit: self.limits[dimension as usize].load(Ordering::Relaxed),
                distinct: self.distinct[dimension as usize].load(Ordering::Relaxed),
                overflowed: self.overflowed[dimension as usize].load(Ordering::Relaxed),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_dimension_is_held_to_its_limit() {
        let cardinality = Cardinality::new();
        cardinality.set_limit(Dimension::Operation, 3);
        let names: Vec<Sym> =
            (0..10).map(|i| cardinality.intern(Dimension::Operation, &format!("GET /flood-test/{i}"))).collect();
        assert_eq!(names[2].as_str(), "GET /flood-test/2");
        assert!(names[3..].iter().all(|s| s.as_str() == OVERFLOW));
        // Known names still resolve, in any dimension; other dimensions are not affected.
        assert_eq!(cardinality.intern(Dimension::Operation, "GET /flood-test/1").as_str(), "GET /flood-test/1");
        assert_eq!(cardinality.intern(Dimension::Service, "flood-test-svc").as_str(), "flood-test-svc");
        let state = cardinality.state();
        let operations = state.iter().find(|s| s.dimension == Dimension::Operation).unwrap();
        assert_eq!((operations.limit, operations.distinct, operations.overflowed), (3, 3, 7));
        for dimension in Dimension::ALL {
            let limit = state.iter().find(|s| s.dimension == dimension).unwrap().limit;
            assert_eq!(limit, if dimension == Dimension::Operation { 3 } else { dimension.default_limit() });
        }
    }

    #[test]
    fn same_text_same_symbol() {
        assert_eq!(Sym::new("gateway"), Sym::new("gateway"));
        assert_ne!(Sym::new("gateway"), Sym::new("catalog"));
        assert_eq!(Sym::new("catalog").as_str(), "catalog");
        assert!(Sym::new("b") > Sym::new("a"));
    }
}
