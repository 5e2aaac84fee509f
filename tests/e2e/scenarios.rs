//! Golden scenarios: every shipped scenario in `tests/scenarios/` runs through `stormwatch
//! eval`, which fails on a missed attack, a warning-or-higher alert during a legitimate
//! change, or too many false alerts. A scenario file is reviewed like code.

use std::process::Command;

use crate::support::{binary, repo_path};

fn scenarios() -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(repo_path("tests/scenarios"))
        .expect("tests/scenarios")
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(!files.is_empty());
    files
}

#[test]
fn every_shipped_scenario_passes_eval() {
    let dir = tempfile::tempdir().unwrap();
    for scenario in scenarios() {
        let name = scenario.file_stem().unwrap().to_str().unwrap().to_string();
        let picture = dir.path().join(format!("{name}.svg"));
        let output = Command::new(binary())
            .args(["eval", "--quiet", "--picture"])
            .arg(&picture)
            .arg(&scenario)
            .output()
            .expect("run stormwatch eval");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "eval {name} failed:\n{stdout}\n{stderr}");
        assert!(stdout.contains("result: PASS"), "{stdout}");
        assert!(stdout.contains(" detected "), "an attack must be detected in {name}:\n{stdout}");
        let svg = std::fs::read_to_string(&picture).expect("picture written");
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    }
}

/// `loadgen` files replayed give the alerts `eval` found in process: the files are real
/// OTLP and the two paths run the same engine.
#[test]
fn loadgen_files_replay_to_the_same_alerts_as_eval() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = repo_path("tests/scenarios/shop.toml");
    let traffic = dir.path().join("shop.binpb");
    let status =
        Command::new(binary()).args(["loadgen", "--quiet", "-o"]).arg(&traffic).arg(&scenario).status().unwrap();
    assert!(status.success());
    let labels: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("shop.labels.json")).unwrap()).unwrap();
    assert_eq!(labels["scenario"], "shop");
    assert!(labels["changes"][0]["traces"].as_u64().unwrap() > 0);

    let alerts_file = dir.path().join("eval-alerts.jsonl");
    let output = Command::new(binary())
        .args(["eval", "--quiet", "--picture"])
        .arg(dir.path().join("shop.svg"))
        .arg("--alerts")
        .arg(&alerts_file)
        .arg(&scenario)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stdout));
    let replay = Command::new(binary())
        .args(["replay", "--quiet"])
        .arg(&traffic)
        .env_remove("STORMWATCH_KAFKA_BROKERS")
        .output()
        .unwrap();
    assert!(replay.status.success(), "{}", String::from_utf8_lossy(&replay.stderr));
    let strip = |text: &str| -> Vec<serde_json::Value> {
        text.lines()
            .map(|line| {
                let mut alert: serde_json::Value = serde_json::from_str(line).unwrap();
                alert.as_object_mut().unwrap().remove("detected_at");
                alert
            })
            .collect()
    };
    let from_eval = strip(&std::fs::read_to_string(&alerts_file).unwrap());
    let from_replay = strip(&String::from_utf8_lossy(&replay.stdout));
    assert!(!from_eval.is_empty());
    assert_eq!(from_eval, from_replay);
    for line in String::from_utf8_lossy(&replay.stdout).lines() {
        crate::support::assert_valid_alert(&serde_json::from_str(line).unwrap());
    }
}
