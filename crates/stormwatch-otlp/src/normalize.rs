//! Statement normalisation: literals become `?` so `WHERE id = 5` and `WHERE id = 7` are one
//! operation, and IN-lists or multi-row VALUES of any length are one shape.
//!
//! The result is bounded in length: an attacker who varies statements must not grow the
//! interner or the baselines without limit.

/// Longest normalised statement kept, in bytes.
const MAX_STATEMENT_LEN: usize = 512;

/// Normalises a SQL (or SQL-like) statement.
pub fn normalize_statement(statement: &str) -> String {
    let bytes = statement.as_bytes();
    let mut out = String::with_capacity(statement.len().min(MAX_STATEMENT_LEN));
    let mut i = 0;
    let mut last_was_space = true;
    while i < bytes.len() && out.len() < MAX_STATEMENT_LEN * 2 {
        let c = bytes[i];
        match c {
            b' ' | b'\t' | b'\n' | b'\r' => {
                if !last_was_space {
                    out.push(' ');
                    last_was_space = true;
                }
                i += 1;
                continue;
            }
            b'\'' => {
                i = skip_quoted(bytes, i + 1, b'\'');
                out.push('?');
            }
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i < bytes.len() && !(bytes[i] == b'*' && bytes.get(i + 1) == Some(&b'/')) {
                    i += 1;
                }
                i = (i + 2).min(bytes.len());
                // A comment separates like a space: `a/**/b` is `a b`, and what is left on
                // either side cannot join into a new comment (found by fuzzing).
                if !last_was_space {
                    out.push(' ');
                    last_was_space = true;
                }
                continue;
            }
            b'0'..=b'9' if !out.chars().next_back().is_some_and(is_ident_char) => {
                i += 1;
                while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'.' || bytes[i] == b'_') {
                    i += 1;
                }
                // A sign directly before a number, after an operator, is part of the literal.
                if out.ends_with('-') && out[..out.len() - 1].trim_end().ends_with(['=', '<', '>', '(', ',']) {
                    out.pop();
                }
                out.push('?');
            }
            _ => {
                // Copy one whole UTF-8 character.
                let len = utf8_len(c);
                let end = (i + len).min(bytes.len());
                out.push_str(std::str::from_utf8(&bytes[i..end]).unwrap_or("\u{fffd}"));
                i = end;
                last_was_space = false;
                continue;
            }
        }
        last_was_space = false;
    }
    // Until nothing collapses: `(?, ?), (?, ?)` becomes `(?), (?)` in one pass and `(?)` in the
    // next, so bulk inserts of any row count are one statement (found by fuzzing).
    let mut collapsed = collapse_lists(out.trim_end());
    loop {
        let again = collapse_lists(&collapsed);
        if again.len() == collapsed.len() {
            break;
        }
        collapsed = again;
    }
    truncate_at_char(collapsed, MAX_STATEMENT_LEN)
}

fn is_ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == '$' || c == '@' || c == ':'
}

fn utf8_len(first: u8) -> usize {
    match first {
        0xF0..=0xFF => 4,
        0xE0..=0xEF => 3,
        0xC0..=0xDF => 2,
        _ => 1,
    }
}

/// Index just past the closing quote, honouring doubled quotes and backslash escapes.
fn skip_quoted(bytes: &[u8], mut i: usize, quote: u8) -> usize {
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            i += 2;
        } else if bytes[i] == quote {
            if bytes.get(i + 1) == Some(&quote) {
                i += 2;
            } else {
                return i + 1;
            }
        } else {
            i += 1;
        }
    }
    bytes.len()
}

/// `?, ?, ?` -> `?` and `(?), (?)` -> `(?)`, whatever the spacing.
fn collapse_lists(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        out.push(c as char);
        i += 1;
        if c == b'?' || (c == b')' && out.ends_with("(?)")) {
            // Swallow following `, ?` (or `, (?)`) repetitions.
            loop {
                let mut j = i;
                while j < bytes.len() && bytes[j] == b' ' {
                    j += 1;
                }
                if j >= bytes.len() || bytes[j] != b',' {
                    break;
                }
                j += 1;
                while j < bytes.len() && bytes[j] == b' ' {
                    j += 1;
                }
                let repeat: &[u8] = if c == b'?' { b"?" } else { b"(?)" };
                if bytes[j..].starts_with(repeat) {
                    i = j + repeat.len();
                } else {
                    break;
                }
            }
        }
        // Non-ASCII bytes: copy the rest of the character unchanged.
        if c >= 0x80 {
            out.pop();
            let start = i - 1;
            let end = (start + utf8_len(c)).min(bytes.len());
            out.push_str(std::str::from_utf8(&bytes[start..end]).unwrap_or("\u{fffd}"));
            i = end;
        }
    }
    out
}

fn truncate_at_char(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        // A cut after a space leaves one at the end, which normalising again would trim.
        text.truncate(text.trim_end().len());
    }
    text
}

#[cfg(test)]
mod tests {
    use super::normalize_statement as n;

    #[test]
    fn literals_become_placeholders() {
        assert_eq!(n("SELECT * FROM users WHERE id = 5"), "SELECT * FROM users WHERE id = ?");
        assert_eq!(n("SELECT * FROM users WHERE id = 7"), n("SELECT * FROM users WHERE id = 5"));
        assert_eq!(n("select a from t where name = 'O''Brien'"), "select a from t where name = ?");
        assert_eq!(n("SELECT x FROM t WHERE v > -3.5e2"), "SELECT x FROM t WHERE v > ?");
        assert_eq!(n("SELECT col1, t2.c3 FROM t2"), "SELECT col1, t2.c3 FROM t2");
    }

    #[test]
    fn lists_collapse_whatever_their_length() {
        assert_eq!(n("SELECT * FROM t WHERE id IN (1, 2, 3)"), "SELECT * FROM t WHERE id IN (?)");
        assert_eq!(n("SELECT * FROM t WHERE id IN (1,2)"), n("SELECT * FROM t WHERE id IN (9)"));
        assert_eq!(n("INSERT INTO t VALUES (1), (2), (3)"), "INSERT INTO t VALUES (?)");
        assert_eq!(n("INSERT INTO t VALUES (?,?,?)"), "INSERT INTO t VALUES (?)");
        // Rows of several values, however many rows: one statement.
        assert_eq!(n("INSERT INTO t (a, b) VALUES (1, 'x'), (2, 'y'), (3, 'z')"), "INSERT INTO t (a, b) VALUES (?)");
        assert_eq!(n("INSERT INTO t VALUES (?, ?, ?), (?, ?, ?)"), "INSERT INTO t VALUES (?)");
    }

    #[test]
    fn whitespace_and_comments() {
        assert_eq!(n("  SELECT\n\t*   FROM t -- trailing\n"), "SELECT * FROM t");
        assert_eq!(n("SELECT /* hint */ 1"), "SELECT ?");
        assert_eq!(n("SELECT a/**/FROM t"), "SELECT a FROM t");
        // What is left around a comment never joins into a new one.
        let once = n("R / //* */* ***R");
        assert_eq!(n(&once), once);
        // Cut at the limit right after a space: no trailing space.
        let long = format!("SELECT {} FROM t", "a".repeat(super::MAX_STATEMENT_LEN - 8));
        assert!(!n(&long).ends_with(' '));
    }

    #[test]
    fn placeholders_and_unicode_survive() {
        assert_eq!(n("SELECT * FROM t WHERE a = $1 AND b = :name"), "SELECT * FROM t WHERE a = $1 AND b = :name");
        assert_eq!(n("SELECT 'é' FROM tablé"), "SELECT ? FROM tablé");
    }

    #[test]
    fn bounded() {
        let huge = format!("SELECT {} FROM t", "a, ".repeat(10_000));
        assert!(n(&huge).len() <= 512);
    }

    proptest::proptest! {
        #[test]
        fn never_panics_and_stays_bounded(statement in "\\PC{0,600}") {
            let normalized = n(&statement);
            proptest::prop_assert!(normalized.len() <= 512);
        }

        #[test]
        fn numbers_never_matter(a in 0u64..1_000_000, b in 0u64..1_000_000) {
            proptest::prop_assert_eq!(
                n(&format!("SELECT * FROM t WHERE id = {a} LIMIT {b}")),
                n(&format!("SELECT * FROM t WHERE id = {b} LIMIT {a}"))
            );
        }
    }
}
