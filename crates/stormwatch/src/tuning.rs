//! `models/tuning.toml`: the security engineers' decisions as a commented, reviewable file.
//! Parsed and validated here (a bad edit is refused with the line it is on, and the tuning in
//! force stays); applied by `stormwatch_detect::tuning`.
//!
//! ```toml
//! # freeze = true                       # stop all learning
//!
//! [detectors]
//! retry_storm = "shadow"                # on | shadow | off
//!
//! [[override]]                          # every selector set must match; none: all findings
//! edge = "reviews `GET /reviews` -> postgresql `SELECT name FROM users WHERE id = ?`"
//! # entry = "gateway `GET /search`"
//! # kind = "n_plus_one"
//! threshold_factor = 2.0                # alert above 2x the learned threshold
//! # limit = 50                          # or above this absolute value
//! # min_samples = 500
//! # severity = "critical"
//! # enabled = false
//! # freeze = true                       # stop learning this edge (false: learn again);
//!                                       # with no selector: every baseline
//! reason = "the reviews page lists up to 40 authors"
//!
//! [[override]]                          # a detector's mode, later blocks win
//! kind = "cache_bypass"
//! mode = "shadow"
//!
//! [[allow]]                             # a legitimate amplifier, until it expires
//! entry = "batch `POST /reindex`"       # or clients = "10.1.0.0/16", or user = "svc-reindex"
//! until = "2027-01-31T00:00:00Z"
//! reason = "nightly reindex"
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use stormwatch_detect::tuning::{Allowance, Mode, Rule, Tuning};
use stormwatch_model::{AlertKind, Severity};
use toml::Spanned;

/// The tuning file in a models directory.
pub(crate) const TUNING_FILE: &str = "tuning.toml";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Doc {
    #[serde(default)]
    freeze: bool,
    #[serde(default)]
    detectors: BTreeMap<Spanned<String>, Spanned<String>>,
    #[serde(default, rename = "override")]
    overrides: Vec<Spanned<OverrideDoc>>,
    #[serde(default)]
    allow: Vec<Spanned<AllowDoc>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OverrideDoc {
    edge: Option<String>,
    entry: Option<String>,
    kind: Option<String>,
    threshold_factor: Option<f64>,
    limit: Option<f64>,
    min_samples: Option<u64>,
    severity: Option<String>,
    #[serde(default = "yes")]
    enabled: bool,
    freeze: Option<bool>,
    mode: Option<String>,
    #[serde(default)]
    reason: String,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AllowDoc {
    entry: Option<String>,
    clients: Option<String>,
    user: Option<String>,
    until: String,
    #[serde(default)]
    reason: String,
}

fn kind(text: &str) -> Option<AlertKind> {
    AlertKind::ALL.into_iter().find(|k| k.as_str() == text)
}

fn severity(text: &str) -> Option<Severity> {
    match text {
        "info" => Some(Severity::Info),
        "warning" => Some(Severity::Warning),
        "critical" => Some(Severity::Critical),
        _ => None,
    }
}

fn mode_of(text: &str) -> Result<Mode, String> {
    match text {
        "on" => Ok(Mode::On),
        "shadow" => Ok(Mode::Shadow),
        "off" => Ok(Mode::Off),
        other => Err(format!("mode {other:?} is not on, shadow or off")),
    }
}

/// Edges and entries are named as alerts and `baseline list` print them.
fn named(name: &str) -> Result<(), String> {
    if name.contains('`') {
        Ok(())
    } else {
        Err(format!("{name:?} is not named as alerts name it: service `operation` (see `stormwatch baseline list`)"))
    }
}

/// Parses and validates tuning text; errors name `origin` and the line.
pub(crate) fn parse(text: &str, origin: &Path) -> Result<Tuning, String> {
    let line = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
    let at = |offset: usize, message: String| format!("{} line {}: {message}", origin.display(), line(offset));
    let doc: Doc = toml::from_str(text).map_err(|e| {
        let message = e.message().to_string();
        match e.span() {
            Some(span) => at(span.start, message),
            None => format!("{}: {message}", origin.display()),
        }
    })?;
    let kinds = || AlertKind::ALL.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(", ");
    let mut tuning = Tuning { freeze_all: doc.freeze, ..Tuning::default() };
    for (name, mode) in doc.detectors {
        let detector = kind(name.get_ref()).ok_or_else(|| {
            at(name.span().start, format!("unknown detector {:?}; detectors are {}", name.get_ref(), kinds()))
        })?;
        tuning.detectors.insert(detector, mode_of(mode.get_ref()).map_err(|m| at(mode.span().start, m))?);
    }
    for entry in doc.overrides {
        let start = entry.span().start;
        let o = entry.into_inner();
        let kind = match &o.kind {
            Some(text) => {
                Some(kind(text).ok_or_else(|| at(start, format!("unknown kind {text:?}; kinds are {}", kinds())))?)
            }
            None => None,
        };
        let severity = match &o.severity {
            Some(text) => Some(
                severity(text)
                    .ok_or_else(|| at(start, format!("severity {text:?} is not info, warning or critical")))?,
            ),
            None => None,
        };
        if o.threshold_factor.is_some_and(|f| !(f.is_finite() && f > 0.0)) {
            return Err(at(start, "threshold_factor must be a positive number".into()));
        }
        if o.limit.is_some_and(|l| !l.is_finite() || l < 0.0) {
            return Err(at(start, "limit must be a number of at least 0".into()));
        }
        for name in [&o.edge, &o.entry].into_iter().flatten() {
            named(name).map_err(|message| at(start, message))?;
        }
        match (o.freeze, &o.edge) {
            // No edge: every baseline (the override form of `freeze` at the top).
            (Some(freeze), None) => {
                if o.entry.is_some() || kind.is_some() {
                    return Err(at(start, "freeze applies to an edge, or with no selector to everything".into()));
                }
                tuning.freeze_all = freeze;
            }
            (Some(true), Some(edge)) => {
                tuning.frozen_edges.insert(edge.clone());
            }
            (Some(false), Some(edge)) => {
                tuning.frozen_edges.remove(edge);
            }
            (None, _) => {}
        }
        if let Some(mode) = &o.mode {
            let (Some(detector), None, None) = (kind, &o.edge, &o.entry) else {
                return Err(at(start, "mode applies to a whole detector: set kind, and no edge or entry".into()));
            };
            tuning.detectors.insert(detector, mode_of(mode).map_err(|m| at(start, m))?);
        }
        let acts = o.threshold_factor.is_some()
            || o.limit.is_some()
            || o.min_samples.is_some()
            || severity.is_some()
            || !o.enabled;
        if !acts {
            continue;
        }
        tuning.rules.push(Rule {
            edge: o.edge,
            entry: o.entry,
            kind,
            threshold_factor: o.threshold_factor,
            limit: o.limit,
            min_samples: o.min_samples,
            severity,
            enabled: o.enabled,
            reason: o.reason,
        });
    }
    for entry in doc.allow {
        let start = entry.span().start;
        let a = entry.into_inner();
        if a.entry.is_none() && a.clients.is_none() && a.user.is_none() {
            return Err(at(start, "an allow entry needs entry, clients or user".into()));
        }
        if let Some(name) = &a.entry {
            named(name).map_err(|message| at(start, message))?;
        }
        let until = stormwatch_model::parse_rfc3339(&a.until).ok_or_else(|| {
            at(start, format!("until = {:?} is not an RFC 3339 time like 2027-01-31T00:00:00Z", a.until))
        })?;
        tuning.allow.push(Allowance {
            entry: a.entry,
            clients: a.clients,
            user: a.user,
            until_unix_nano: until,
            reason: a.reason,
        });
    }
    Ok(tuning)
}

/// Reads and validates a tuning file; a missing file is no tuning.
pub(crate) fn load(path: &Path) -> Result<Option<Tuning>, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text, path).map(Some),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(format!("cannot read {}: {error}", path.display())),
    }
}

/// Watches a tuning file: reloads it when it changes (or on request, e.g. SIGHUP).
pub(crate) struct TuningWatch {
    path: PathBuf,
    seen: Option<SystemTime>,
}

impl TuningWatch {
    pub(crate) fn new(path: PathBuf) -> TuningWatch {
        let seen = modified(&path);
        TuningWatch { path, seen }
    }

    /// `Some` with the new tuning (or the error that kept the old one) when the file changed
    /// since the last call, or `force`.
    pub(crate) fn poll(&mut self, force: bool) -> Option<Result<Tuning, String>> {
        let now = modified(&self.path);
        if now == self.seen && !force {
            return None;
        }
        self.seen = now;
        Some(load(&self.path).map(Option::unwrap_or_default))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The file was just written by this engine: no reload needed.
    pub(crate) fn mark_seen(&mut self) {
        self.seen = modified(&self.path);
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// One line about what a tuning holds, for logs.
pub(crate) fn describe(tuning: &Tuning) -> String {
    let modes: HashMap<&str, usize> = tuning.detectors.values().fold(HashMap::new(), |mut m, mode| {
        *m.entry(match mode {
            Mode::On => "on",
            Mode::Shadow => "shadow",
            Mode::Off => "off",
        })
        .or_default() += 1;
        m
    });
    format!(
        "{} overrides ({} frozen edges), {} allowlisted, {} detectors in shadow, {} off{}",
        tuning.rules.len(),
        tuning.frozen_edges.len(),
        tuning.allow.len(),
        modes.get("shadow").unwrap_or(&0),
        modes.get("off").unwrap_or(&0),
        if tuning.freeze_all { ", all learning frozen" } else { "" }
    )
}

/// One change an engineer makes through the admin API or `stormwatch baseline`. It is appended
/// to the tuning file as a block headed by a comment saying who made it, when and why, so the
/// file is its own audit trail, and a change is undone by its inverse (unfreeze, mode on) or
/// by deleting its block (`git revert` when the file is versioned).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub(crate) enum Change {
    /// An override of an edge's, an entry's or a detector's judgement.
    Set {
        edge: Option<String>,
        entry: Option<String>,
        kind: Option<String>,
        threshold_factor: Option<f64>,
        limit: Option<f64>,
        min_samples: Option<u64>,
        severity: Option<String>,
        enabled: Option<bool>,
        #[serde(default)]
        reason: String,
    },
    /// Stop learning an edge, or (no edge) every baseline.
    Freeze {
        edge: Option<String>,
        #[serde(default)]
        reason: String,
    },
    Unfreeze {
        edge: Option<String>,
        #[serde(default)]
        reason: String,
    },
    /// A detector on, in shadow mode, or off.
    Mode {
        kind: String,
        mode: String,
        #[serde(default)]
        reason: String,
    },
    Allow {
        entry: Option<String>,
        clients: Option<String>,
        user: Option<String>,
        until: String,
        #[serde(default)]
        reason: String,
    },
}

/// Longest text of one field of a change (an edge, a reason, ...).
pub(crate) const MAX_FIELD_BYTES: usize = 4096;

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
/// The text of the change's entry is checked first ([`check_entry`]), its comment header is
/// escaped, and the new file is parsed again before it is written: it must hold exactly what the old one
/// held plus the one entry the change asked for, or nothing is written.
pub(crate) fn append(path: &Path, change: &Change, who: &str, now_unix_nano: u64) -> Result<Tuning, String> {
    let (array, entry, summary) = change.entry();
    check_entry(&entry)?;
    let current = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(error) => return Err(format!("cannot read {}: {error}", path.display())),
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
        .map_err(|why| format!("{}: the change was not written: {why}", path.display()))?;
    let write_error = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(write_error)?;
    }
    let temporary = path.with_extension("toml.tmp");
    stormwatch_io::write_private_file(&temporary, text.as_bytes()).map_err(write_error)?;
    std::fs::rename(&temporary, path).map_err(write_error)?;
    Ok(tuning)
}

/// Whether `after` is `before` with `entry` appended to its `array` and nothing else changed.
fn exactly_one_more(before: &str, after: &str, array: &str, entry: &toml::Table) -> Result<(), String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
# freeze = true

[detectors]
retry_storm = "shadow"

[[override]]
edge = "reviews `GET /reviews` -> postgresql `SELECT name FROM users WHERE id = ?`"
threshold_factor = 2.0
freeze = true
reason = "the reviews page lists up to 40 authors"

[[override]]
kind = "n_plus_one"
severity = "critical"

[[allow]]
entry = "batch `POST /reindex`"
until = "2027-01-31T00:00:00Z"
reason = "nightly reindex"
"#;

    /// `set` with a threshold factor of 2 for an edge or an entry.
    fn doubled_threshold(edge: Option<String>, entry: Option<String>, reason: &str) -> Change {
        Change::Set {
            edge,
            entry,
            kind: None,
            threshold_factor: Some(2.0),
            limit: None,
            min_samples: None,
            severity: None,
            enabled: None,
            reason: reason.into(),
        }
    }

    #[test]
    fn the_documented_example_parses() {
        let tuning = parse(EXAMPLE, Path::new("models/tuning.toml")).unwrap();
        assert_eq!(tuning.rules.len(), 2);
        assert_eq!(tuning.detectors.get(&AlertKind::RetryStorm), Some(&Mode::Shadow));
        assert_eq!(tuning.frozen_edges.len(), 1);
        assert_eq!(tuning.rules[1].severity, Some(Severity::Critical));
        assert_eq!(Some(tuning.allow[0].until_unix_nano), stormwatch_model::parse_rfc3339("2027-01-31T00:00:00Z"));
        assert!(!tuning.freeze_all);
        assert_eq!(describe(&tuning), "2 overrides (1 frozen edges), 1 allowlisted, 1 detectors in shadow, 0 off");
    }

    #[test]
    fn a_bad_edit_names_the_file_and_line() {
        let origin = Path::new("models/tuning.toml");
        let cases = [
            (EXAMPLE.replace("retry_storm = \"shadow\"", "retry_storms = \"shadow\""), 5, "unknown detector"),
            (EXAMPLE.replace("\"shadow\"", "\"quiet\""), 5, "not on, shadow or off"),
            (EXAMPLE.replace("kind = \"n_plus_one\"", "kind = \"n_plus_two\""), 13, "unknown kind"),
            (EXAMPLE.replace("threshold_factor = 2.0", "threshold_factor = -1.0"), 7, "positive"),
            (EXAMPLE.replace("until = \"2027-01-31T00:00:00Z\"", "until = \"soon\""), 17, "RFC 3339"),
            (EXAMPLE.replace("severity = \"critical\"", "severity = \"high\""), 13, "severity"),
            (EXAMPLE.replace("threshold_factor = 2.0", "threshold_factr = 2.0"), 9, "threshold_factr"),
            (EXAMPLE.replace("edge = \"reviews", "edgy = \"reviews"), 8, "edgy"),
            (
                EXAMPLE.replace("entry = \"batch `POST /reindex`\"", "entry = \"batch POST /reindex\""),
                17,
                "service `operation`",
            ),
        ];
        for (text, line, words) in cases {
            let error = parse(&text, origin).unwrap_err();
            assert!(error.starts_with(&format!("models/tuning.toml line {line}: ")), "{error}");
            assert!(error.contains(words), "{error}");
        }
    }

    #[test]
    fn changes_append_commented_blocks_that_validate_and_undo() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("models").join(TUNING_FILE);
        let edge = "reviews `GET /reviews` -> postgresql `SELECT 1`".to_string();
        let at = stormwatch_model::parse_rfc3339("2026-11-29T10:00:00Z").unwrap();
        let set = doubled_threshold(Some(edge.clone()), None, "a long page");
        append(&path, &set, "alice", at).unwrap();
        append(&path, &Change::Freeze { edge: Some(edge.clone()), reason: String::new() }, "alice", at).unwrap();
        let shadow = Change::Mode { kind: "retry_storm".into(), mode: "shadow".into(), reason: "trial".into() };
        let tuning = append(&path, &shadow, "bob", at).unwrap();
        assert_eq!(tuning.rules.len(), 1);
        assert_eq!(tuning.rules[0].threshold_factor, Some(2.0));
        assert!(tuning.frozen_edges.contains(&edge));
        assert_eq!(tuning.detectors.get(&AlertKind::RetryStorm), Some(&Mode::Shadow));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("# 2026-11-29T10:00:00.000Z by alice: set reviews"), "{text}");
        assert!(text.contains("# 2026-11-29T10:00:00.000Z by bob: retry_storm shadow"), "{text}");

        // Undone by the inverse; an invalid change leaves the file as it was.
        let tuning = append(&path, &Change::Unfreeze { edge: Some(edge), reason: String::new() }, "alice", at).unwrap();
        assert!(tuning.frozen_edges.is_empty());
        let tuning = append(&path, &Change::Freeze { edge: None, reason: "incident".into() }, "alice", at).unwrap();
        assert!(tuning.freeze_all);
        let tuning = append(&path, &Change::Unfreeze { edge: None, reason: String::new() }, "alice", at).unwrap();
        assert!(!tuning.freeze_all);
        let before = std::fs::read_to_string(&path).unwrap();
        let bad = Change::Mode { kind: "retry_storm".into(), mode: "loud".into(), reason: String::new() };
        let error = append(&path, &bad, "eve", at).unwrap_err();
        assert!(error.contains("\"loud\""), "{error}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), before);
        assert_eq!(load(&path).unwrap().unwrap().rules.len(), 1);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
    }

    /// TOML injection: text that would end the comment header or the entry (a newline and a
    /// block that turns a detector off) is refused in every field of every change, and the
    /// file is left as it was; a name that ingest escaped is written as the text it is.
    #[test]
    fn injected_lines_never_reach_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(TUNING_FILE);
        let at = stormwatch_model::parse_rfc3339("2026-11-29T10:00:00Z").unwrap();
        append(
            &path,
            &Change::Mode { kind: "n_plus_one".into(), mode: "on".into(), reason: "start".into() },
            "alice",
            at,
        )
        .unwrap();
        let before = std::fs::read_to_string(&path).unwrap();
        let payload = "a `b` -> c `d`\n[[override]]\nkind = \"retry_storm\"\nmode = \"off\"\n# ";
        let text = || Some(payload.to_string());
        let reason = || payload.to_string();
        let set = |edge, entry| doubled_threshold(edge, entry, "");
        let allow = |entry, clients, user| Change::Allow {
            entry,
            clients,
            user,
            until: "2027-01-01T00:00:00Z".into(),
            reason: String::new(),
        };
        let changes = [
            (Change::Freeze { edge: text(), reason: String::new() }, "edge"),
            (Change::Unfreeze { edge: text(), reason: String::new() }, "edge"),
            (Change::Freeze { edge: None, reason: reason() }, "reason"),
            (set(text(), None), "edge"),
            (set(None, text()), "entry"),
            (allow(text(), None, None), "entry"),
            (allow(None, text(), None), "clients"),
            (allow(None, None, text()), "user"),
            (Change::Mode { kind: "retry_storm\u{202e}".into(), mode: "on".into(), reason: String::new() }, "kind"),
        ];
        for (change, field) in changes {
            let error = append(&path, &change, "alice", at).unwrap_err();
            assert!(error.starts_with(field) && error.contains("control character"), "{error}");
            assert_eq!(std::fs::read_to_string(&path).unwrap(), before);
        }
        // The same text as ingest keeps it (escaped): written, and read back as that text.
        let escaped = stormwatch_model::clean_name(payload, 4096).0.into_owned();
        let tuning =
            append(&path, &Change::Freeze { edge: Some(escaped.clone()), reason: String::new() }, "bob\nx", at)
                .unwrap();
        assert!(tuning.frozen_edges.contains(&escaped));
        assert!(!tuning.detectors.contains_key(&AlertKind::RetryStorm));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("# 2026-11-29T10:00:00.000Z by bob\\nx: freeze a `b` -> c `d`\\n[[override]]"), "{text}");
        assert_eq!(text.lines().filter(|l| l.trim() == "[[override]]").count(), 2, "{text}");
    }

    /// After a change is written, the file holds exactly one entry more: a file whose last
    /// line would swallow the new block (an open multi-line string) is not written to.
    #[test]
    fn a_change_adds_exactly_its_entry() {
        let before = "[[override]]\nkind = \"n_plus_one\"\nmode = \"on\"\n";
        let mut entry = toml::Table::new();
        entry.insert("kind".into(), toml::Value::String("retry_storm".into()));
        entry.insert("mode".into(), toml::Value::String("shadow".into()));
        let good = format!("{before}\n[[override]]\nkind = \"retry_storm\"\nmode = \"shadow\"\n");
        assert_eq!(exactly_one_more(before, &good, "override", &entry), Ok(()));
        let more = format!("{good}\n[detectors]\ncache_bypass = \"off\"\n");
        assert!(exactly_one_more(before, &more, "override", &entry).unwrap_err().contains("more than the one entry"));
        let other = good.replace("n_plus_one", "cache_bypass");
        assert!(exactly_one_more(before, &other, "override", &entry).is_err());
    }
}
