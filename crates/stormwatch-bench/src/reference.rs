//! `stormwatch bench-reference`: the decode-and-drop reference the engine is measured against.

use anyhow::Context;
use prost::Message;
use stormwatch_otlp::collector::ExportTraceServiceRequest;
use tokio_util::sync::CancellationToken;

/// `stormwatch bench-reference`: the decode-and-drop reference servers, or (`--file`) the
/// decode-and-drop of a length-prefixed protobuf file.
pub async fn reference(args: crate::ReferenceArgs) -> anyhow::Result<()> {
    if let Some(file) = &args.file {
        let data = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
        let mut rest = data.as_slice();
        let mut spans = 0usize;
        while rest.len() >= 4 {
            let length = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            anyhow::ensure!(rest.len() >= 4 + length, "{}: truncated", file.display());
            let request = ExportTraceServiceRequest::decode(&rest[4..4 + length])?;
            spans += request.resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len()).sum::<usize>();
            rest = &rest[4 + length..];
        }
        println!("{spans}");
        return Ok(());
    }
    let max = stormwatch_io::otlp::DEFAULT_MAX_MESSAGE_BYTES;
    let grpc = tokio::net::TcpListener::bind(&args.otlp_grpc).await?;
    let http = tokio::net::TcpListener::bind(&args.otlp_http).await?;
    let stop = CancellationToken::new();
    let grpc = tokio::spawn(stormwatch_io::otlp::reference::serve_reference_grpc(grpc, max, stop.clone()));
    let http = tokio::spawn(stormwatch_io::otlp::reference::serve_reference_http(http, max, stop.clone()));
    tokio::signal::ctrl_c().await?;
    stop.cancel();
    grpc.await??;
    http.await??;
    Ok(())
}
