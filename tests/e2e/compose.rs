//! `docker-compose.yml`, its Collector config and the Dockerfile agree with the engine: the
//! topics, encodings, ports and settings they use are the engine's defaults or valid
//! settings, and the Collector partitions traces by id for the consumer group. (No Docker
//! engine runs here; the files are parsed and checked, and the engine's own config file is
//! loaded by the real binary.)

use yaml_rust2::{Yaml, YamlLoader};

use crate::support::{binary, repo_path};

fn yaml(path: &str) -> Yaml {
    let text = std::fs::read_to_string(repo_path(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{path} is not YAML: {e}")).remove(0)
}

fn strings(node: &Yaml) -> Vec<String> {
    match node {
        Yaml::Array(items) => items.iter().filter_map(|i| i.as_str().map(String::from)).collect(),
        Yaml::String(text) => vec![text.clone()],
        _ => Vec::new(),
    }
}

/// `serve --print-config` with the compose engines' config file: what they run with.
fn engine_config() -> String {
    let output = std::process::Command::new(binary())
        .args(["serve", "--print-config", "--kafka-brokers", "kafka:9092", "--kafka-input"])
        .env("STORMWATCH_CONFIG", repo_path("deploy/stormwatch.toml"))
        .output()
        .unwrap();
    assert!(output.status.success(), "deploy/stormwatch.toml: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn compose_collector_and_engines_agree() {
    let compose = yaml("docker-compose.yml");
    let services = &compose["services"];
    for name in ["kafka", "kafka-init", "otel-collector", "stormwatch-0", "stormwatch-1"] {
        assert!(!services[name].is_badvalue(), "service {name} missing");
    }
    let config = engine_config();
    let setting = |key: &str| -> String {
        config
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key} = ")))
            .unwrap_or_else(|| panic!("{key} not in the effective config:\n{config}"))
            .trim_matches('"')
            .to_string()
    };
    let input_topic = setting("input_topic");
    let encoding = setting("input_encoding");
    let dead_letters = setting("dead_letter_topic");

    // The Collector writes what the engines read, partitioned by trace id.
    let collector = yaml("deploy/otel-collector.yaml");
    let kafka = &collector["exporters"]["kafka"];
    assert_eq!(kafka["topic"].as_str(), Some(input_topic.as_str()));
    assert_eq!(kafka["encoding"].as_str(), Some(encoding.as_str()));
    assert_eq!(kafka["partition_traces_by_id"].as_bool(), Some(true));
    assert_eq!(strings(&kafka["brokers"]), ["kafka:9092"]);
    assert_eq!(strings(&collector["service"]["pipelines"]["traces"]["exporters"]), ["kafka"]);
    let published = strings(&services["otel-collector"]["ports"]);
    assert!(published.contains(&"4317:4317".to_string()) && published.contains(&"4318:4318".to_string()));

    // Every topic the engines use is created before they start (the engine checks, it does
    // not create).
    let init = strings(&services["kafka-init"]["command"]).join(" ");
    for topic in [input_topic.as_str(), "stormwatch.alerts", dead_letters.as_str()] {
        assert!(init.contains(&format!("--topic {topic} ")), "kafka-init does not create {topic}: {init}");
    }

    // Two engines built from this repository, one group, Kafka in and out, admin reachable.
    for name in ["stormwatch-0", "stormwatch-1"] {
        let engine = &services[name];
        assert_eq!(engine["build"].as_str(), Some("."), "{name}");
        let command = strings(&engine["command"]);
        assert_eq!(command[0], "serve");
        assert!(command.contains(&"--kafka-input".to_string()), "{name}: {command:?}");
        let admin = command.iter().position(|a| a == "--admin").map(|i| command[i + 1].clone());
        assert_eq!(admin.as_deref(), Some("0.0.0.0:9464"));
        let env = &engine["environment"];
        assert_eq!(env["STORMWATCH_KAFKA_BROKERS"].as_str(), Some("kafka:9092"));
        assert_eq!(env["STORMWATCH_ALERT_TOPIC"].as_str(), Some("stormwatch.alerts"));
        // Static membership: a restarted engine takes its partitions back and its shared
        // windows count once.
        assert_eq!(env["STORMWATCH_KAFKA_INSTANCE_ID"].as_str(), Some(name));
        assert!(strings(&engine["ports"]).iter().any(|p| p.ends_with(":9464")), "{name}");
    }
    assert_eq!(setting("group_id"), "stormwatch");

    // The image runs this binary on the engine's default ports.
    let dockerfile = std::fs::read_to_string(repo_path("Dockerfile")).unwrap();
    assert!(dockerfile.contains("cargo build --release --locked -p stormwatch"));
    assert!(dockerfile.contains("EXPOSE 4317 4318 9464"));
    assert!(dockerfile.contains(r#"ENTRYPOINT ["stormwatch"]"#));
    let toolchain = std::fs::read_to_string(repo_path("rust-toolchain.toml")).unwrap();
    let channel = toolchain.lines().find_map(|l| l.strip_prefix("channel = ")).unwrap().trim_matches('"');
    assert!(dockerfile.contains(&format!("FROM rust:{channel}-")), "the image builds with the pinned toolchain");
}
