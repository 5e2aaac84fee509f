//! Interned strings. Service names, operations and statements repeat millions of times; each
//! is stored once and spans carry a 4-byte [`Sym`].
//!
//! The interner is process-wide and append-only. Unbounded cardinality is the callers' concern:
//! decoders normalise statements and cap what they intern before it reaches here.

use std::fmt;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_text_same_symbol() {
        assert_eq!(Sym::new("gateway"), Sym::new("gateway"));
        assert_ne!(Sym::new("gateway"), Sym::new("catalog"));
        assert_eq!(Sym::new("catalog").as_str(), "catalog");
        assert!(Sym::new("b") > Sym::new("a"));
    }
}
