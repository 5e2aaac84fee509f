//! `stormwatch`: catches illegitimate use of legitimate channels in OpenTelemetry traces.
//!
//! The binary owns the command line and wires the stages together; all decisions live in
//! the library crates.

// The CLI's doc comments are its `--help` text, written for a terminal (`<name>` is a
// placeholder there, not an HTML tag).
#![allow(rustdoc::invalid_html_tags)]

mod baseline;
mod cli;
mod eval;
mod loadgen;
mod replay;
mod serve;

use std::process::ExitCode;

use clap::Parser;
pub(crate) use cli::*;

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rdkafka=warn,h2=warn,tower=warn,hyper=warn"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("stormwatch-io").build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("stormwatch: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve::run(args).await,
            Command::Replay(args) => replay::run(args).await,
            Command::Loadgen(args) => loadgen::run(args).await,
            Command::Eval(args) => tokio::task::spawn_blocking(move || eval::run(args)).await?,
            Command::Baseline(args) => tokio::task::spawn_blocking(move || baseline::run(args)).await?,
            Command::Bench(args) => stormwatch_bench::run(args).await,
            Command::BenchReference(args) => stormwatch_bench::reference(args).await,
            Command::BenchMemory(args) => {
                tokio::task::spawn_blocking(move || stormwatch_bench::memory_probe(args)).await?
            }
        }
    });
    // A Kafka client stuck on a broker that is down must not hold the exit (serve's shutdown
    // already gave up on it at its deadline).
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("stormwatch: error: {}", report(&error));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes in one line, `outer: cause: ...`, leaving out a cause whose text
/// the message before it already says (typed errors name their source in their own message).
fn report(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let cause = cause.to_string();
        if text.is_empty() {
            text = cause;
        } else if !text.contains(&cause) {
            text = format!("{text}: {cause}");
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use anyhow::Context;

    use super::report;

    #[test]
    fn a_cause_is_said_once() {
        let io = || std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory");
        // A typed error that says its source, as thiserror's do.
        #[derive(Debug)]
        struct Read {
            source: std::io::Error,
        }
        impl std::fmt::Display for Read {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "cannot read x.toml: {}", self.source)
            }
        }
        impl std::error::Error for Read {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.source)
            }
        }
        let typed = anyhow::Error::new(Read { source: io() });
        assert_eq!(report(&typed), "cannot read x.toml: No such file or directory");
        // Context on a bare cause keeps both.
        let bare = Err::<(), _>(io()).context("the scenario's [eval] settings").unwrap_err();
        assert_eq!(report(&bare), "the scenario's [eval] settings: No such file or directory");
        let outer = Err::<(), _>(Read { source: io() }).context("serve").unwrap_err();
        assert_eq!(report(&outer), "serve: cannot read x.toml: No such file or directory");
    }
}
