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
    // The scenario's [eval] settings, as a config file for replay.
    let config = dir.path().join("eval.toml");
    std::fs::write(&config, "[detect]\nwindow = \"30s\"\n").unwrap();
    let replay = Command::new(binary())
        .args(["replay", "--quiet", "--config"])
        .arg(&config)
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

/// `loadgen --send` over gRPC and HTTP: every generated span reaches a running engine, which
/// catches the scenario's attacks.
#[test]
fn loadgen_sends_a_scenario_to_a_running_engine() {
    let scenario = repo_path("tests/scenarios/shop.toml");
    for transport in ["grpc", "http"] {
        let dir = tempfile::tempdir().unwrap();
        let serve = crate::support::Serve::start(dir.path(), &["--alerts-file", ""]);
        let endpoint = match transport {
            "grpc" => format!("grpc://{}", serve.grpc),
            _ => format!("http://{}", serve.http),
        };
        let output = Command::new(binary())
            .args(["loadgen", "--send", &endpoint, "--rate", "0", "--connections", "2"])
            .arg(&scenario)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).to_string();
        assert!(output.status.success(), "loadgen over {transport}: {stderr}");
        let sent: u64 = stderr
            .split("sent ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no summary in {stderr}"));
        assert!(sent > 100_000, "the shop scenario sends about 250,000 spans, not {sent}");
        let wanted = format!("stormwatch_spans_received_total {sent}\n");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !serve.metrics().contains(&wanted) {
            assert!(std::time::Instant::now() < deadline, "over {transport}: {}", serve.metrics());
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        let alerts = serve.stop();
        let kinds: Vec<String> = alerts
            .lines()
            .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap()["kind"].as_str().unwrap().to_string())
            .collect();
        assert!(kinds.iter().any(|k| k == "n_plus_one"), "over {transport}: {kinds:?}");
        assert!(kinds.iter().any(|k| k == "fanout_amplification"), "over {transport}: {kinds:?}");
    }
}
