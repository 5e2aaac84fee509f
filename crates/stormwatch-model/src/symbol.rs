//! Interned strings. Service names, operations and statements repeat millions of times; each
//! is stored once and spans carry a 4-byte [`Sym`].
//!
//! The interner is process-wide and append-only, so what reaches it must be bounded: decoders
//! normalise statements, and intern names that come from the traffic through
//! [`Sym::bounded`], which holds each [`Dimension`] (services, operations, statements, ...) to
//! three limits:
//!
//! * **length**: a name longer than its dimension's [`Dimension::max_name_bytes`] is cut at a
//!   character boundary and ends in [`TRUNCATED`] (counted);
//! * **characters**: control characters (line breaks, escape, C1 controls) and the Unicode
//!   characters that reorder or hide text (bidirectional overrides, line separators, byte-order
//!   marks) are written as escapes (`\n`, `\u{202e}`), so a name is always one line that reads
//!   as what it is, in logs, the tuning file and the console (counted);
//! * **count and bytes**: past its limit of distinct names, or of the bytes they take, new
//!   names of that dimension become one overflow symbol, [`OVERFLOW`], and are counted.
//!
//! A flood of invented names (however long) costs nothing, and is reported.

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

/// Bytes a name may take per dimension (after escaping); longer ones are truncated.
const MAX_NAME_BYTES: [usize; 7] = [256, 512, 1024, 256, 2048, 64, 256];

/// Bytes all the names of a dimension may take by default, [`NAME_OVERHEAD`] each included.
const DEFAULT_BYTE_LIMITS: [usize; 7] = [4 << 20, 16 << 20, 32 << 20, 4 << 20, 4 << 20, 8 << 20, 8 << 20];

/// What the interner spends on a name beyond its text (its hash-table entry and key), counted
/// against the byte limits.
pub const NAME_OVERHEAD: usize = 32;

/// What a truncated name ends with.
pub const TRUNCATED: &str = "\u{2026}";

/// Whether `c` is written as an escape in names: control characters, and the characters that
/// break a line or reorder or hide the text around them (bidirectional embeddings, overrides
/// and isolates, marks, separators, the byte-order mark).
pub fn is_unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}'
        )
}

/// How a name was changed to be kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cleaned {
    /// It was longer than allowed and was cut.
    pub truncated: bool,
    /// It held characters [`is_unsafe_char`] calls unsafe, now escapes.
    pub escaped: bool,
}

/// `text` as a name may be kept: unsafe characters escaped (`\n`, `\t`, `\r`, otherwise
/// `\u{...}`), and at most `max_bytes` long, a longer one cut at a character boundary to end in
/// [`TRUNCATED`]. Borrowed when nothing changes (the common case: one pass over the bytes).
pub fn clean_name(text: &str, max_bytes: usize) -> (std::borrow::Cow<'_, str>, Cleaned) {
    use std::borrow::Cow;
    let printable_ascii = text.bytes().all(|b| (0x20..0x7f).contains(&b));
    let escaped = !printable_ascii && text.chars().any(is_unsafe_char);
    if text.len() <= max_bytes && !escaped {
        return (Cow::Borrowed(text), Cleaned::default());
    }
    let mut out = String::with_capacity(text.len().min(max_bytes + 8));
    for c in text.chars() {
        // Stop early: the rest would be cut anyway.
        if out.len() > max_bytes {
            break;
        }
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if is_unsafe_char(c) => {
                use std::fmt::Write;
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    let truncated = out.len() > max_bytes;
    if truncated {
        let mut end = max_bytes.saturating_sub(TRUNCATED.len());
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
        out.push_str(TRUNCATED);
    }
    (Cow::Owned(out), Cleaned { truncated, escaped })
}

impl Dimension {
    /// Every dimension.
    pub const ALL: [Dimension; 7] = [
        Dimension::Service,
        Dimension::Operation,
        Dimension::Statement,
        Dimension::Peer,
        Dimension::QueryShape,
        Dimension::Client,
        Dimension::User,
    ];

    /// The dimension's name in `[limits]` and metrics (`statements`).
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

    /// The default limit of the bytes its names take ([`NAME_OVERHEAD`] each included).
    pub fn default_byte_limit(self) -> usize {
        DEFAULT_BYTE_LIMITS[self as usize]
    }

    /// The longest name kept, in bytes; longer ones are cut to end in [`TRUNCATED`].
    pub fn max_name_bytes(self) -> usize {
        MAX_NAME_BYTES[self as usize]
    }

    /// Whether names of this dimension shape the call graph: a flood of them is an attack on
    /// the engine (clients and users are many by nature, and only counted).
    pub fn is_structural(self) -> bool {
        !matches!(self, Dimension::Client | Dimension::User)
    }
}

/// Distinct names interned, the bytes they take, and names folded into [`OVERFLOW`],
/// truncated or escaped, per dimension.
pub struct Cardinality {
    limits: [AtomicUsize; 7],
    byte_limits: [AtomicUsize; 7],
    distinct: [AtomicUsize; 7],
    bytes: [AtomicUsize; 7],
    overflowed: [AtomicU64; 7],
    truncated: [AtomicU64; 7],
    escaped: [AtomicU64; 7],
}

impl fmt::Debug for Cardinality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cardinality").finish_non_exhaustive()
    }
}

/// One dimension's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DimensionState {
    /// The dimension.
    pub dimension: Dimension,
    /// Most distinct names kept.
    pub limit: usize,
    /// Most bytes those names may take.
    pub byte_limit: usize,
    /// Distinct names interned.
    pub distinct: usize,
    /// Bytes the names interned take ([`NAME_OVERHEAD`] each included).
    pub bytes: usize,
    /// New names past either limit, folded into [`OVERFLOW`].
    pub overflowed: u64,
    /// Names cut to [`Dimension::max_name_bytes`] (each time one arrives).
    pub truncated: u64,
    /// Names whose unsafe characters were escaped (each time one arrives).
    pub escaped: u64,
}

static CARDINALITY: Cardinality = Cardinality::new();

/// One atomic per dimension, starting at `values`.
const fn atomics(values: [usize; 7]) -> [AtomicUsize; 7] {
    let mut atomics = [const { AtomicUsize::new(0) }; 7];
    let mut i = 0;
    while i < atomics.len() {
        atomics[i] = AtomicUsize::new(values[i]);
        i += 1;
    }
    atomics
}

impl Cardinality {
    /// Every dimension at its default limits.
    #[allow(clippy::new_without_default)]
    pub const fn new() -> Cardinality {
        Cardinality {
            limits: atomics(DEFAULT_LIMITS),
            byte_limits: atomics(DEFAULT_BYTE_LIMITS),
            distinct: [const { AtomicUsize::new(0) }; 7],
            bytes: [const { AtomicUsize::new(0) }; 7],
            overflowed: [const { AtomicU64::new(0) }; 7],
            truncated: [const { AtomicU64::new(0) }; 7],
            escaped: [const { AtomicU64::new(0) }; 7],
        }
    }

    /// The process-wide state [`Sym::bounded`] uses.
    pub fn global() -> &'static Cardinality {
        &CARDINALITY
    }

    /// Sets the most distinct names `dimension` keeps.
    pub fn set_limit(&self, dimension: Dimension, limit: usize) {
        self.limits[dimension as usize].store(limit, Ordering::Relaxed);
    }

    /// Sets the most bytes `dimension`'s names may take.
    pub fn set_byte_limit(&self, dimension: Dimension, bytes: usize) {
        self.byte_limits[dimension as usize].store(bytes, Ordering::Relaxed);
    }

    /// `text` as a name of `dimension`: cleaned ([`clean_name`]: escaped, cut to the
    /// dimension's length), then interned unless the dimension holds its limit of names or of
    /// bytes, when it is [`OVERFLOW`]. Every change and every fold is counted.
    pub fn intern(&self, dimension: Dimension, text: &str) -> Sym {
        let index = dimension as usize;
        let (text, cleaned) = clean_name(text, dimension.max_name_bytes());
        if cleaned.truncated {
            self.truncated[index].fetch_add(1, Ordering::Relaxed);
        }
        if cleaned.escaped {
            self.escaped[index].fetch_add(1, Ordering::Relaxed);
        }
        if let Some(key) = interner().get(text.as_ref()) {
            return Sym(key);
        }
        let size = text.len() + NAME_OVERHEAD;
        // Two threads interning the same new name may both count it: the limits err low.
        let counted = self.distinct[index].fetch_add(1, Ordering::Relaxed) < self.limits[index].load(Ordering::Relaxed);
        let sized = self.bytes[index].fetch_add(size, Ordering::Relaxed) + size
            <= self.byte_limits[index].load(Ordering::Relaxed);
        if counted && sized {
            Sym::new(&text)
        } else {
            self.distinct[index].fetch_sub(1, Ordering::Relaxed);
            self.bytes[index].fetch_sub(size, Ordering::Relaxed);
            self.overflowed[index].fetch_add(1, Ordering::Relaxed);
            Sym::new(OVERFLOW)
        }
    }

    /// Each dimension's limits and use.
    pub fn state(&self) -> Vec<DimensionState> {
        Dimension::ALL
            .into_iter()
            .map(|dimension| {
                let i = dimension as usize;
                DimensionState {
                    dimension,
                    limit: self.limits[i].load(Ordering::Relaxed),
                    byte_limit: self.byte_limits[i].load(Ordering::Relaxed),
                    distinct: self.distinct[i].load(Ordering::Relaxed),
                    bytes: self.bytes[i].load(Ordering::Relaxed),
                    overflowed: self.overflowed[i].load(Ordering::Relaxed),
                    truncated: self.truncated[i].load(Ordering::Relaxed),
                    escaped: self.escaped[i].load(Ordering::Relaxed),
                }
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
        assert_eq!(operations.bytes, names[..3].iter().map(|s| s.as_str().len() + NAME_OVERHEAD).sum::<usize>());
        for dimension in Dimension::ALL {
            let limit = state.iter().find(|s| s.dimension == dimension).unwrap().limit;
            assert_eq!(limit, if dimension == Dimension::Operation { 3 } else { dimension.default_limit() });
        }
    }

    #[test]
    fn names_are_cut_to_their_dimension_and_escaped() {
        let cardinality = Cardinality::new();
        let long = "s".repeat(1_000_000);
        let kept = cardinality.intern(Dimension::Service, &long);
        assert_eq!(kept.as_str().len(), Dimension::Service.max_name_bytes());
        assert!(kept.as_str().starts_with("sss") && kept.as_str().ends_with(TRUNCATED), "{kept:?}");
        // A multi-byte character is never split.
        let wide = "\u{e9}".repeat(1_000);
        let kept = cardinality.intern(Dimension::Service, &wide);
        assert!(kept.as_str().len() <= Dimension::Service.max_name_bytes());
        assert!(kept.as_str().ends_with(TRUNCATED));
        // One line, readable: a newline, an escape and a right-to-left override become text.
        let sneaky = "svc\n[[override]]\tkind = \"retry_storm\"\r\u{1b}[31m\u{202e}gnp.exe\u{85}";
        let kept = cardinality.intern(Dimension::Service, sneaky);
        assert_eq!(kept.as_str(), "svc\\n[[override]]\\tkind = \"retry_storm\"\\r\\u{1b}[31m\\u{202e}gnp.exe\\u{85}");
        assert!(!kept.as_str().chars().any(is_unsafe_char));
        // Ordinary names, in any script, are kept as they are.
        for name in ["checkout", "GET /items/{id}", "caf\u{e9}-\u{670d}\u{52a1}", "a b\\n"] {
            assert_eq!(cardinality.intern(Dimension::Operation, name).as_str(), name);
        }
        let state = cardinality.state();
        let services = state.iter().find(|s| s.dimension == Dimension::Service).unwrap();
        assert_eq!((services.truncated, services.escaped), (2, 1));
        // Cleaning is idempotent: a kept name is kept as it is.
        for name in [kept.as_str(), &"x".repeat(300)] {
            let once = clean_name(name, 256).0.into_owned();
            assert_eq!(clean_name(&once, 256).0, once);
        }
    }

    #[test]
    fn the_bytes_of_a_dimension_are_bounded_too() {
        let cardinality = Cardinality::new();
        // Room for ten names of 100 bytes (each with its overhead), whatever the count limit.
        cardinality.set_byte_limit(Dimension::Peer, 10 * (100 + NAME_OVERHEAD));
        let names: Vec<Sym> = (0..30).map(|i| cardinality.intern(Dimension::Peer, &format!("{i:0>100}"))).collect();
        assert!(names[..10].iter().all(|s| s.as_str().len() == 100));
        assert!(names[10..].iter().all(|s| s.as_str() == OVERFLOW));
        let state = cardinality.state();
        let peers = state.iter().find(|s| s.dimension == Dimension::Peer).unwrap();
        assert_eq!((peers.distinct, peers.bytes, peers.overflowed), (10, 10 * (100 + NAME_OVERHEAD), 20));
        // The budget is spent: even a short new name is folded.
        assert_eq!(cardinality.intern(Dimension::Peer, "p").as_str(), OVERFLOW);
    }

    #[test]
    fn same_text_same_symbol() {
        assert_eq!(Sym::new("gateway"), Sym::new("gateway"));
        assert_ne!(Sym::new("gateway"), Sym::new("catalog"));
        assert_eq!(Sym::new("catalog").as_str(), "catalog");
        assert!(Sym::new("b") > Sym::new("a"));
    }
}
