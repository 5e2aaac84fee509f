//! Changes to the tuning file from the admin API and `stormwatch baseline`: each appended as a
//! commented block that must be one line of text per field and add exactly its own entry.

use std::path::Path;

use serde::{Deserialize, Serialize};
use stormwatch_detect::tuning::Tuning;

use super::{parse, TuningError};

/// One change an engineer makes through the admin API or `stormwatch baseline`. It is appended
/// to the tuning file as a block headed by a comment saying who made it, when and why, so the
/// file is its own audit trail, and a change is undone by its inverse (unfreeze, mode on) or
/// by deleting its block (`git revert` when the file is versioned).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Change {
    /// An override of an edge's, an entry's or a detector's judgement.
    Set {
        /// The edge it applies to, as alerts name it.
        edge: Option<String>,
        /// The entry point it applies to, as alerts name it.
        entry: Option<String>,
        /// The kind it applies to.
        kind: Option<String>,
        /// Alert only above the learned threshold times this.
        threshold_factor: Option<f64>,
        /// Alert only above this absolute value.
        limit: Option<f64>,
        /// Alert only once the baseline has this many samples.
        min_samples: Option<u64>,
        /// `info`, `warning` or `critical`.
        severity: Option<String>,
        /// `false`: drop the findings it matches.
        enabled: Option<bool>,
        /// Why (written above the entry, shown by explain and the API).
        #[serde(default)]
        reason: String,
    },
    /// Stop learning an edge, or (no edge) every baseline.
    Freeze {
        /// The edge, as alerts name it; none: every baseline.
        edge: Option<String>,
        /// Why.
        #[serde(default)]
        reason: String,
    },
    /// Learn an edge again, or (no edge) every baseline.
    Unfreeze {
        /// The edge, as alerts name it; none: every baseline.
        edge: Option<String>,
        /// Why.
        #[serde(default)]
        reason: String,
    },
    /// A detector on, in shadow mode, or off.
    Mode {
        /// The detector (`retry_storm`, ...).
        kind: String,
        /// `on`, `shadow` or `off`.
        mode: String,
        /// Why.
        #[serde(default)]
        reason: String,
    },
    /// Allowlist an entry point, a client population or a user until a time.
    Allow {
        /// The entry point, as alerts name it.
        entry: Option<String>,
        /// A client population, as alerts name it (`10.1.0.0/16`).
        clients: Option<String>,
        /// An authenticated user (`enduser.id`).
        user: Option<String>,
        /// RFC 3339 time after which it no longer applies.
        until: String,
        /// Why.
        #[serde(default)]
        reason: String,
    },
}

/// Longest text of one field of a change (an edge, a reason, ...).
const MAX_FIELD_BYTES: usize = 4096;

impl Change {
    /// The entry the change appends: its array (`override` or `allow`), the table, and a
    /// summary for the comment that heads it.
    fn entry(&self) -> (&'static str, toml::Table, String) {
        use toml::Value;
        let mut table = toml::Table::new();
        let mut put = |key: &str, value: Option<Value>| {
            if let Some(value) = value {
                table.insert(key.to_string(), value);
            }
        };
        let text = |v: &Option<String>| v.clone().map(Value::String);
        let (array, summary, reason) = match self {
            Change::Set { edge, entry, kind, threshold_factor, limit, min_samples, severity, enabled, reason } => {
                put("edge", text(edge));
                put("entry", text(entry));
                put("kind", text(kind));
                put("threshold_factor", threshold_factor.map(Value::Float));
                put("limit", limit.map(Value::Float));
                put("min_samples", min_samples.map(|n| Value::Integer(n as i64)));
                put("severity", text(severity));
                put("enabled", enabled.map(Value::Boolean));
                let target = edge.as_deref().or(entry.as_deref()).or(kind.as_deref()).unwrap_or("every finding");
                ("override", format!("set {target}"), reason)
            }
            Change::Freeze { edge, reason } => {
                put("edge", text(edge));
                put("freeze", Some(Value::Boolean(true)));
                ("override", format!("freeze {}", edge.as_deref().unwrap_or("all learning")), reason)
            }
            Change::Unfreeze { edge, reason } => {
                put("edge", text(edge));
                put("freeze", Some(Value::Boolean(false)));
                ("override", format!("unfreeze {}", edge.as_deref().unwrap_or("all learning")), reason)
            }
            Change::Mode { kind, mode, reason } => {
                put("kind", Some(Value::String(kind.clone())));
                put("mode", Some(Value::String(mode.clone())));
                ("override", format!("{kind} {mode}"), reason)
            }
            Change::Allow { entry, clients, user, until, reason } => {
                put("entry", text(entry));
                put("clients", text(clients));
                put("user", text(user));
                put("until", Some(Value::String(until.clone())));
                let who = entry.as_deref().or(clients.as_deref()).or(user.as_deref()).unwrap_or("?");
                ("allow", format!("allow {who} until {until}"), reason)
            }
        };
        if !reason.is_empty() {
            table.insert("reason".into(), Value::String(reason.clone()));
        }
        (array, table, summary)
    }
}

/// A comment line's text: one line (escaped), at most `max` bytes.
fn comment_text(text: &str, max: usize) -> String {
    stormwatch_model::clean_name(text, max).0.into_owned()
}

/// Refuses an entry whose text could not be one line of the file: a control character, a
/// character that reorders or hides text, or more than [`MAX_FIELD_BYTES`]. Names the field.
/// (Names from telemetry never hold such characters: ingest writes them as escapes.)
fn check_entry(entry: &toml::Table) -> Result<(), String> {
    for (field, value) in entry {
        let Some(text) = value.as_str() else { continue };
        if text.len() > MAX_FIELD_BYTES {
            return Err(format!("{field} is {} bytes long; at most {MAX_FIELD_BYTES}", text.len()));
        }
        if let Some((at, c)) = text.char_indices().find(|(_, c)| stormwatch_model::is_unsafe_char(*c)) {
            return Err(format!(
                "{field} holds the control character {c:?} at byte {at}: names and reasons are one line of text \
                 (copy edges from `stormwatch baseline list` or an alert)"
            ));
        }
    }
    Ok(())
}

/// Appends `change` to the tuning file at `path` (created when missing) if the result
/// validates; the file is replaced atomically (mode 0600). Returns the new tuning.
///
/// The text of the change's entry is checked first (`check_entry`), its comment header is
/// escaped, and the new file is parsed again before it is written: it must hold exactly what the old one
/// held plus the one entry the change asked for, or nothing is written.
pub fn append(path: &Path, change: &Change, who: &str, now_unix_nano: u64) -> Result<Tuning, TuningError> {
    let (array, entry, summary) = change.entry();
    check_entry(&entry).map_err(TuningError::Entry)?;
    let current = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(error) => return Err(TuningError::Read { path: path.to_path_buf(), error }),
    };
    let mut doc = toml::Table::new();
    doc.insert(array.to_string(), toml::Value::Array(vec![toml::Value::Table(entry.clone())]));
    let block = toml::to_string(&doc).expect("a tuning block always serialises");
    let mut text = current.clone();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&format!(
        "\n# {} by {}: {}\n{block}",
        stormwatch_model::rfc3339(now_unix_nano),
        comment_text(who, 64),
        comment_text(&summary, 300)
    ));
    let tuning = parse(&text, path)?;
    exactly_one_more(&current, &text, array, &entry)
        .map_err(|why| TuningError::NotWritten { path: path.to_path_buf(), why })?;
    let write_error = |error: std::io::Error| TuningError::Write { path: path.to_path_buf(), error };
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(write_error)?;
    }
    let temporary = path.with_extension("toml.tmp");
    stormwatch_io::write_private_file(&temporary, text.as_bytes()).map_err(write_error)?;
    std::fs::rename(&temporary, path).map_err(write_error)?;
    Ok(tuning)
}

/// Whether `after` is `before` with `entry` appended to its `array` and nothing else changed.
pub(super) fn exactly_one_more(before: &str, after: &str, array: &str, entry: &toml::Table) -> Result<(), String> {
    let before: toml::Table = toml::from_str(before).map_err(|e| format!("the file does not parse: {e}"))?;
    let after: toml::Table = toml::from_str(after).map_err(|e| format!("the new file does not parse: {e}"))?;
    let mut expected = before;
    let entries = expected.entry(array.to_string()).or_insert_with(|| toml::Value::Array(Vec::new()));
    match entries {
        toml::Value::Array(entries) => entries.push(toml::Value::Table(entry.clone())),
        _ => return Err(format!("`{array}` is not an array of tables")),
    }
    if after != expected {
        return Err("it would change more than the one entry it adds".into());
    }
    Ok(())
}
