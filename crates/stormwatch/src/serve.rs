//! `stormwatch serve`: the configuration from defaults, file, environment and flags, then the
//! engine's server (`stormwatch_engine::serve`) until SIGINT or SIGTERM.

use anyhow::Context;
use stormwatch_engine::config::Config;

use crate::{CommonArgs, ServeArgs};

/// Defaults < `--config` file < environment and flags (clap merged those two).
pub(crate) fn load_config(common: &CommonArgs) -> anyhow::Result<Config> {
    let mut config = match &common.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    if let Some(brokers) = &common.kafka_brokers {
        config.kafka.brokers = brokers.clone();
    }
    if let Some(topic) = &common.alert_topic {
        config.kafka.alert_topic = topic.clone();
    }
    if let Some(samples) = common.learning_min_samples {
        config.baseline.learning_min_samples = samples;
    }
    Ok(config)
}

pub(crate) async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = load_config(&args.common)?;
    if let Some(addr) = &args.otlp_grpc {
        config.server.otlp_grpc = addr.clone();
    }
    if let Some(addr) = &args.otlp_http {
        config.server.otlp_http = addr.clone();
    }
    if let Some(addr) = &args.admin {
        config.server.admin = addr.clone();
    }
    if let Some(dir) = &args.models {
        config.baseline.models_dir = dir.clone();
    }
    if let Some(file) = &args.alerts_file {
        config.output.alerts_file = file.clone();
    }
    if args.kafka_input {
        config.kafka.input = true;
    }
    if let Some(id) = &args.kafka_instance_id {
        config.kafka.instance_id = id.clone();
    }
    config.validate()?;
    config.limits.apply();
    config.attribution.apply()?;
    if let Ok(token) = std::env::var("STORMWATCH_ADMIN_TOKEN") {
        config.server.admin_token = token;
    }
    if let Ok(token) = std::env::var("STORMWATCH_INGEST_TOKEN") {
        config.server.ingest_token = token;
    }
    if args.print_config {
        let mut shown = config.clone();
        for secret in [&mut shown.server.admin_token, &mut shown.server.ingest_token] {
            if !secret.is_empty() {
                *secret = "<set; not shown>".into();
            }
        }
        for (key, value) in shown.kafka.client.iter_mut() {
            if ["password", "secret", "key", "token"].iter().any(|s| key.contains(s)) && !key.ends_with(".location") {
                *value = "<set; not shown>".into();
            }
        }
        print!("{}", toml::to_string(&shown).context("cannot print the configuration")?);
        return Ok(());
    }
    stormwatch_engine::serve::run(config).await
}
