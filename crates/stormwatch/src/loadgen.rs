//! `stormwatch loadgen SCENARIO --output FILE`: the scenario's traffic as OTLP files, with
//! its ground-truth labels beside them.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use prost::Message;
use stormwatch_loadgen::{Generator, Scenario};

use crate::LoadgenArgs;

mod send;

/// The output file, gzip-compressed or not. `finish` writes the gzip trailer and reports
/// errors a drop would swallow (a full disk must not leave a silently truncated file).
enum Output {
    Plain(BufWriter<File>),
    /// Buffered in front of the encoder: serde_json writes many tiny pieces, and each small
    /// write into a GzEncoder costs a compression step.
    Gzip(BufWriter<flate2::write::GzEncoder<BufWriter<File>>>),
}

impl Output {
    fn gzip(file: File) -> Output {
        let encoder = flate2::write::GzEncoder::new(BufWriter::new(file), flate2::Compression::fast());
        Output::Gzip(BufWriter::with_capacity(1 << 20, encoder))
    }

    fn finish(self) -> std::io::Result<()> {
        match self {
            Output::Plain(mut out) => {
                out.flush()?;
                out.into_inner().map_err(|e| e.into_error())?.sync_all()
            }
            Output::Gzip(out) => {
                let mut file = out.into_inner().map_err(|e| e.into_error())?.finish()?;
                file.flush()?;
                file.into_inner().map_err(|e| e.into_error())?.sync_all()
            }
        }
    }
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Output::Plain(out) => out.write(buf),
            Output::Gzip(out) => out.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Output::Plain(out) => out.flush(),
            Output::Gzip(out) => out.flush(),
        }
    }
}

enum Format {
    JsonLines,
    Protobuf,
}

pub(crate) async fn run(args: LoadgenArgs) -> anyhow::Result<()> {
    match args.send.clone() {
        Some(endpoint) => send::run(args, endpoint).await,
        None => tokio::task::spawn_blocking(move || write_file(args)).await?,
    }
}

fn write_file(args: LoadgenArgs) -> anyhow::Result<()> {
    let scenario = Scenario::from_file(&args.scenario)?;
    let output = args.output.clone().context("--output FILE or --send ENDPOINT is required")?;
    let name = output.file_name().and_then(|n| n.to_str()).unwrap_or("").to_ascii_lowercase();
    let gzip = name.ends_with(".gz");
    let base = name.strip_suffix(".gz").unwrap_or(&name);
    let format = if base.ends_with(".jsonl") || base.ends_with(".json") {
        Format::JsonLines
    } else if base.ends_with(".binpb") || base.ends_with(".pb") {
        Format::Protobuf
    } else {
        anyhow::bail!(
            "--output {}: name it .jsonl or .jsonl.gz (OTLP/JSON lines) or .binpb (length-prefixed protobuf)",
            output.display()
        );
    };
    let labels_path = args.labels.clone().unwrap_or_else(|| {
        let stem = base
            .trim_end_matches(".jsonl")
            .trim_end_matches(".json")
            .trim_end_matches(".binpb")
            .trim_end_matches(".pb");
        let mut path = output.clone();
        path.set_file_name(format!("{stem}.labels.json"));
        path
    });
    let file = File::create(&output).with_context(|| format!("cannot create {}", output.display()))?;
    let mut out = if gzip { Output::gzip(file) } else { Output::Plain(BufWriter::new(file)) };

    let started = Instant::now();
    let mut last_progress = Instant::now();
    let mut generator = Generator::new(&scenario);
    let mut spans = 0u64;
    let mut buffer = Vec::new();
    for trace in generator.by_ref() {
        spans += trace.spans as u64;
        match format {
            Format::JsonLines => {
                serde_json::to_writer(&mut out, &trace.request)?;
                out.write_all(b"\n")?;
            }
            Format::Protobuf => {
                buffer.clear();
                trace.request.encode(&mut buffer)?;
                out.write_all(&(buffer.len() as u32).to_be_bytes())?;
                out.write_all(&buffer)?;
            }
        }
        if !args.quiet && last_progress.elapsed() >= Duration::from_secs(5) {
            let done = (trace.start_unix_nano - scenario.start_unix_seconds * 1_000_000_000) as f64
                / scenario.duration.as_nanos() as f64;
            eprintln!("loadgen: {:.0}% of event time, {spans} spans", done * 100.0);
            last_progress = Instant::now();
        }
    }
    out.finish().with_context(|| format!("cannot write {}", output.display()))?;
    let requests = generator.requests();
    let labels = generator.into_labels();
    std::fs::write(&labels_path, serde_json::to_string_pretty(&labels)?)
        .with_context(|| format!("cannot write labels to {}", labels_path.display()))?;
    if !args.quiet {
        let elapsed = started.elapsed().as_secs_f64();
        eprintln!(
            "loadgen: {requests} requests, {spans} spans ({} of event time) in {elapsed:.1} s ({:.0} spans/s) -> {}; labels -> {}",
            stormwatch_loadgen::eval::humanize(scenario.duration),
            spans as f64 / elapsed.max(1e-9),
            output.display(),
            PathBuf::from(&labels_path).display()
        );
    }
    Ok(())
}
