//! Interning the names decoders build: normalised statements and joined names, cached per
//! decoding thread so that repeats cost one hash lookup and no allocation.

use std::cell::RefCell;
use std::collections::HashMap;

use stormwatch_model::{Dimension, Sym, OVERFLOW};

use crate::normalize::normalize_statement;

/// Entries per decoding thread in each cache below; a full cache is cleared, so an attacker
/// who varies every statement costs allocations, never memory.
const CACHE_ENTRIES: usize = 8192;
/// Raw statements longer than this are normalised every time rather than cached.
const MAX_CACHED_STATEMENT: usize = 2048;

thread_local! {
    static STATEMENTS: RefCell<HashMap<Box<str>, Sym>> = RefCell::new(HashMap::new());
    static JOINED: RefCell<HashMap<(Sym, char, Sym), Sym>> = RefCell::new(HashMap::new());
}

/// The interned normalised form of a statement. Repeated statements (the common case with
/// placeholders) cost one hash lookup and no allocation.
pub(crate) fn normalized_statement(raw: &str) -> Sym {
    STATEMENTS.with(|cache| {
        let mut cache = cache.borrow_mut();
        if let Some(sym) = cache.get(raw) {
            return *sym;
        }
        let sym = Sym::bounded(Dimension::Statement, &normalize_statement(raw));
        if raw.len() <= MAX_CACHED_STATEMENT {
            if cache.len() >= CACHE_ENTRIES {
                cache.clear();
            }
            cache.insert(raw.into(), sym);
        }
        sym
    })
}

/// `a{separator}b`, interned as a name of `dimension`, without allocating when seen before.
pub(crate) fn joined(dimension: Dimension, a: &str, separator: char, b: &str) -> Sym {
    let key = (Sym::bounded(dimension, a), separator, Sym::bounded(dimension, b));
    if key.0.as_str() == OVERFLOW || key.2.as_str() == OVERFLOW {
        // Not a key: every overflowed part is the same symbol.
        return Sym::bounded(dimension, &format!("{a}{separator}{b}"));
    }
    JOINED.with(|cache| {
        let mut cache = cache.borrow_mut();
        if let Some(sym) = cache.get(&key) {
            return *sym;
        }
        let sym = Sym::bounded(dimension, &format!("{a}{separator}{b}"));
        if cache.len() >= CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(key, sym);
        sym
    })
}
