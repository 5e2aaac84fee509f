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

use serde::Deserialize;
use stormwatch_detect::tuning::{Allowance, Mode, Rule, Tuning};
use stormwatch_model::{AlertKind, EdgeName, EdgeNameError, Severity};
use toml::Spanned;

mod change;
#[cfg(test)]
mod tests;

pub use change::{append, Change};

/// The tuning file in a models directory.
pub const TUNING_FILE: &str = "tuning.toml";

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

/// An edge as alerts name it, parsed once (see [`EdgeName`]).
fn edge_name(name: &str) -> Result<EdgeName, String> {
    EdgeName::parse(name).map_err(|error| match error {
        EdgeNameError::Form => format!(
            "{name:?} is not an edge as alerts name it: caller `operation` -> callee `operation` (see `stormwatch \
             baseline list`)"
        ),
        ambiguous => format!("{name:?}: {ambiguous}"),
    })
}

/// Where in the tuning text an error is: errors name the file and the line.
struct Locator<'a> {
    text: &'a str,
    origin: &'a Path,
}

impl Locator<'_> {
    fn at(&self, offset: usize, message: String) -> String {
        let line = self.text[..offset.min(self.text.len())].matches('\n').count() + 1;
        format!("{} line {line}: {message}", self.origin.display())
    }
}

/// The detectors' names, for errors.
fn kinds() -> String {
    AlertKind::ALL.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(", ")
}

/// Why a tuning file, or a change to it, was refused. Each names the file (and the line, for
/// text that does not validate).
#[derive(Debug, thiserror::Error)]
pub enum TuningError {
    /// The text does not parse or validate: `<file> line N: what is wrong`.
    #[error("{0}")]
    Invalid(String),
    /// The file could not be read.
    #[error("cannot read {}: {error}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The error reading it.
        error: std::io::Error,
    },
    /// The file could not be written.
    #[error("cannot write {}: {error}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The error writing it.
        error: std::io::Error,
    },
    /// A change's text could not be one line of the file (names the field).
    #[error("{0}")]
    Entry(String),
    /// The file would hold more than the one entry the change adds: nothing was written.
    #[error("{}: the change was not written: {why}", path.display())]
    NotWritten {
        /// The file.
        path: PathBuf,
        /// What it would have held.
        why: String,
    },
}

/// Parses and validates tuning text; errors name `origin` and the line.
pub fn parse(text: &str, origin: &Path) -> Result<Tuning, TuningError> {
    parse_text(text, origin).map_err(TuningError::Invalid)
}

fn parse_text(text: &str, origin: &Path) -> Result<Tuning, String> {
    let locator = Locator { text, origin };
    let doc: Doc = toml::from_str(text).map_err(|e| {
        let message = e.message().to_string();
        match e.span() {
            Some(span) => locator.at(span.start, message),
            None => format!("{}: {message}", origin.display()),
        }
    })?;
    let mut tuning = Tuning { freeze_all: doc.freeze, ..Tuning::default() };
    for (name, mode) in doc.detectors {
        let detector = kind(name.get_ref()).ok_or_else(|| {
            locator.at(name.span().start, format!("unknown detector {:?}; detectors are {}", name.get_ref(), kinds()))
        })?;
        tuning.detectors.insert(detector, mode_of(mode.get_ref()).map_err(|m| locator.at(mode.span().start, m))?);
    }
    for entry in doc.overrides {
        let start = entry.span().start;
        apply_override(&mut tuning, entry.into_inner()).map_err(|message| locator.at(start, message))?;
    }
    for entry in doc.allow {
        let start = entry.span().start;
        tuning.allow.push(allowance(entry.into_inner()).map_err(|message| locator.at(start, message))?);
    }
    Ok(tuning)
}

/// One `[[override]]`: freezes, detector modes and rules, checked.
fn apply_override(tuning: &mut Tuning, o: OverrideDoc) -> Result<(), String> {
    let kind = match &o.kind {
        Some(text) => Some(kind(text).ok_or_else(|| format!("unknown kind {text:?}; kinds are {}", kinds()))?),
        None => None,
    };
    let severity = match &o.severity {
        Some(text) => {
            Some(severity(text).ok_or_else(|| format!("severity {text:?} is not info, warning or critical"))?)
        }
        None => None,
    };
    if o.threshold_factor.is_some_and(|f| !(f.is_finite() && f > 0.0)) {
        return Err("threshold_factor must be a positive number".into());
    }
    if o.limit.is_some_and(|l| !l.is_finite() || l < 0.0) {
        return Err("limit must be a number of at least 0".into());
    }
    let edge = o.edge.as_deref().map(edge_name).transpose()?;
    if let Some(entry) = &o.entry {
        named(entry)?;
    }
    match (o.freeze, &edge) {
        // No edge: every baseline (the override form of `freeze` at the top).
        (Some(freeze), None) => {
            if o.entry.is_some() || kind.is_some() {
                return Err("freeze applies to an edge, or with no selector to everything".into());
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
        let (Some(detector), None, None) = (kind, &edge, &o.entry) else {
            return Err("mode applies to a whole detector: set kind, and no edge or entry".into());
        };
        tuning.detectors.insert(detector, mode_of(mode)?);
    }
    let acts = o.threshold_factor.is_some()
        || o.limit.is_some()
        || o.min_samples.is_some()
        || severity.is_some()
        || !o.enabled;
    if acts {
        tuning.rules.push(Rule {
            edge,
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
    Ok(())
}

/// One `[[allow]]`, checked.
fn allowance(a: AllowDoc) -> Result<Allowance, String> {
    if a.entry.is_none() && a.clients.is_none() && a.user.is_none() {
        return Err("an allow entry needs entry, clients or user".into());
    }
    if let Some(name) = &a.entry {
        named(name)?;
    }
    let until = stormwatch_model::parse_rfc3339(&a.until)
        .ok_or_else(|| format!("until = {:?} is not an RFC 3339 time like 2027-01-31T00:00:00Z", a.until))?;
    Ok(Allowance { entry: a.entry, clients: a.clients, user: a.user, until_unix_nano: until, reason: a.reason })
}

/// Reads and validates a tuning file; a missing file is no tuning.
pub fn load(path: &Path) -> Result<Option<Tuning>, TuningError> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text, path).map(Some),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(TuningError::Read { path: path.to_path_buf(), error }),
    }
}

/// Watches a tuning file: reloads it when it changes (or on request, e.g. SIGHUP).
#[derive(Debug)]
pub struct TuningWatch {
    path: PathBuf,
    seen: Option<SystemTime>,
}

impl TuningWatch {
    /// Watches the tuning file at `path`, as it is now.
    pub fn new(path: PathBuf) -> TuningWatch {
        let seen = modified(&path);
        TuningWatch { path, seen }
    }

    /// `Some` with the new tuning (or the error that kept the old one) when the file changed
    /// since the last call, or `force`.
    pub fn poll(&mut self, force: bool) -> Option<Result<Tuning, TuningError>> {
        let now = modified(&self.path);
        if now == self.seen && !force {
            return None;
        }
        self.seen = now;
        Some(load(&self.path).map(Option::unwrap_or_default))
    }

    /// The tuning file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file was just written by this engine: no reload needed.
    pub fn mark_seen(&mut self) {
        self.seen = modified(&self.path);
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// One line about what a tuning holds, for logs.
pub fn describe(tuning: &Tuning) -> String {
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
