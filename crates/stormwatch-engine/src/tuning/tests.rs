//! The tuning file: the documented example, bad edits named by line, changes appended as
//! commented blocks, and injected lines that never reach the file.
use super::change::exactly_one_more;
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
        // A node is not an edge.
        (
            EXAMPLE.replace(" -> postgresql `SELECT name FROM users WHERE id = ?`", ""),
            7,
            "caller `operation` -> callee",
        ),
        (
            EXAMPLE.replace("entry = \"batch `POST /reindex`\"", "entry = \"batch POST /reindex\""),
            17,
            "service `operation`",
        ),
    ];
    for (text, line, words) in cases {
        let error = parse(&text, origin).unwrap_err().to_string();
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
    assert!(tuning.frozen_edges.contains(&EdgeName::parse(&edge).unwrap()));
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
    let error = append(&path, &bad, "eve", at).unwrap_err().to_string();
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
    append(&path, &Change::Mode { kind: "n_plus_one".into(), mode: "on".into(), reason: "start".into() }, "alice", at)
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
        let error = append(&path, &change, "alice", at).unwrap_err().to_string();
        assert!(error.starts_with(field) && error.contains("control character"), "{error}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), before);
    }
    // The same text as ingest keeps it (escaped, here in the callee's operation): written, and
    // read back as that text.
    let escaped = format!("{}`", stormwatch_model::clean_name(payload, 4096).0);
    let tuning =
        append(&path, &Change::Freeze { edge: Some(escaped.clone()), reason: String::new() }, "bob\nx", at).unwrap();
    assert!(tuning.frozen_edges.contains(&EdgeName::parse(&escaped).unwrap()));
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
