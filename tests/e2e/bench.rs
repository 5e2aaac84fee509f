//! `stormwatch bench` end to end, small: every transport against its reference, the memory
//! probe and the alert-latency run, through real child processes and sockets. The figures of
//! a debug build mean nothing; that the command runs, measures and reports does.

use std::process::Command;

use crate::support::binary;

/// The number in `column` (0-based, whitespace-separated) of the line starting with `prefix`.
fn figure(stdout: &str, prefix: &str, column: usize) -> f64 {
    let line =
        stdout.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no {prefix:?} line:\n{stdout}"));
    let field = line.split_whitespace().nth(column).unwrap_or_else(|| panic!("short line {line:?}"));
    field.trim_end_matches(" MB").replace(',', "").parse().unwrap_or_else(|_| panic!("{field:?} in {line:?}"))
}

#[test]
fn bench_measures_every_transport_memory_and_latency() {
    let output = Command::new(binary())
        .args(["bench", "--spans", "20000", "--runs", "1", "--connections", "2", "--latency-seconds", "12"])
        .args(["--kafka", &crate::support::kafka_bootstrap()])
        .env_remove("STORMWATCH_KAFKA_BROKERS")
        .output()
        .expect("run stormwatch bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "bench failed:\n{stdout}\n{stderr}");
    for input in ["grpc", "http", "file"] {
        let reference = figure(&stdout, &format!("{input:<6} reference"), 2);
        let engine = figure(&stdout, &format!("{input:<6} engine"), 2);
        let ratio = figure(&stdout, &format!("{input:<6} engine"), 6);
        assert!(reference > 0.0 && engine > 0.0, "{stdout}");
        assert!((ratio - engine / reference).abs() < 0.02, "the ratio is engine / reference:\n{stdout}");
        assert!(figure(&stdout, &format!("{input:<6} engine"), 3) > 0.0, "CPU per span:\n{stdout}");
    }
    for engines in ["x1", "x2"] {
        assert!(figure(&stdout, &format!("kafka  engine {engines}"), 3) > 0.0, "Kafka input, {engines}:\n{stdout}");
    }
    let memory = stdout.lines().find(|l| l.starts_with("memory: ")).expect("memory line");
    let per_span: f64 = memory["memory: ".len()..].split_whitespace().next().unwrap().parse().unwrap();
    assert!((40.0..1_000.0).contains(&per_span), "{memory}");
    // Overload: every span processed, and the peak RSS under the bound (the bench fails otherwise).
    let overload = stdout.lines().find(|l| l.starts_with("overload")).expect("overload line");
    assert!(overload.contains("none lost"), "{overload}");
    assert!(stdout.contains(" under the bound "), "{stdout}");
    assert!(stdout.contains("last span acknowledged -> alert written: p50 "), "{stdout}");
    // Every attacked request of the steady part of the stream was alerted.
    let alerted = stdout.lines().find(|l| l.starts_with("alert latency")).expect("latency line");
    let counts: Vec<&str> = alerted.split("): ").nth(1).unwrap().split_whitespace().collect();
    assert_eq!(counts[0], counts[2], "{alerted}");
}
