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
use stormwatch_model::{AlertKind, Severity};
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

/// Parses and validates tuning text; errors name `origin` and the line.
#[allow(clippy::too_many_lines)] // over 80 lines: to be broken into named steps (issue 18)
pub fn parse(text: &str, origin: &Path) -> Result<Tuning, String> {
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
pub fn load(path: &Path) -> Result<Option<Tuning>, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text, path).map(Some),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(format!("cannot read {}: {error}", path.display())),
    }
}

/// Watches a tuning file: reloads it when it changes (or on request, e.g. SIGHUP).
#[derive(Debug)]
pub struct TuningWatch {
    path: PathBuf,
    seen: Option<SystemTime>,
}

impl TuningWatch {
    pub fn new(path: PathBuf) -> TuningWatch {
        let seen = modified(&path);
        TuningWatch { path, seen }
    }

    /// `Some` with the new tuning (or the error that kept the old one) when the file changed
    /// since the last call, or `force`.
    pub fn poll(&mut self, force: bool) -> Option<Result<Tuning, String>> {
        let now = modified(&self.path);
        if now == self.seen && !force {
            return None;
        }
        self.seen = now;
        Some(load(&self.path).map(Option::unwrap_or_default))
    }

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
