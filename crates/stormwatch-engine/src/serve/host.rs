//! What `serve` needs from its host: shutdown signals, room in the open-files limit for the
//! listeners' connections, and the admin token file.

use anyhow::Context;

use crate::config::Config;

/// SIGINT (Ctrl-C) and SIGTERM, listened for from the first moment of `serve`: a signal that
/// arrives while the engine is still starting (restoring baselines, joining a group) asks it to
/// stop like any other, instead of killing it with nothing flushed.
pub(super) struct ShutdownSignals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    pub(super) fn listen() -> anyhow::Result<ShutdownSignals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let interrupt = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
            let terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
            Ok(ShutdownSignals { interrupt, terminate })
        }
        #[cfg(not(unix))]
        Ok(ShutdownSignals {})
    }

    /// The next SIGINT or SIGTERM (one that came before this call included).
    pub(super) async fn recv(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Descriptors kept beyond the listeners' connections: snapshots, the alert spool, the tuning
/// file, Kafka clients, the runtime's own.
const FD_RESERVE: u64 = 256;

/// Connections per listener that the open-files limit leaves room for, with [`FD_RESERVE`]
/// descriptors kept aside: `max_connections`, or fewer (with a warning) when the limit is
/// lower than they need. The soft limit is raised to the hard one first, as servers do.
pub(super) fn fit_connections(max_connections: usize) -> anyhow::Result<usize> {
    let limit = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(error) => {
            tracing::warn!(%error, "cannot read the open-files limit; assuming 1024");
            1024
        }
    };
    let listeners = stormwatch_io::server::Listener::ALL.len() as u64;
    let per_listener = limit.saturating_sub(FD_RESERVE) / listeners;
    let room = per_listener.saturating_sub(stormwatch_io::server::MOST_CLOSING as u64) as usize;
    if room >= max_connections {
        return Ok(max_connections);
    }
    if room < 16 {
        anyhow::bail!(
            "the open-files limit ({limit}) leaves room for {room} connections per listener after {FD_RESERVE} kept \
             in reserve: raise it (ulimit -n, or LimitNOFILE= in a systemd unit)"
        );
    }
    tracing::warn!(
        open_files_limit = limit,
        server.max_connections = max_connections,
        connections = room,
        "the open-files limit does not leave room for server.max_connections on each listener; serving fewer \
         (raise it with ulimit -n, or lower server.max_connections)"
    );
    Ok(room)
}

/// The token admin API writes need: configured, or read from (first generated into)
/// `<models>/admin.token`, readable by its owner only. Its value is never logged.
pub(super) fn admin_token(config: &Config) -> anyhow::Result<String> {
    if !config.server.admin_token.is_empty() {
        return Ok(config.server.admin_token.clone());
    }
    let path = config.baseline.models_dir.join(crate::admin::TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(token) if !token.trim().is_empty() => {
            #[cfg(unix)]
            if let Ok(metadata) = std::fs::metadata(&path) {
                let mode = std::os::unix::fs::PermissionsExt::mode(&metadata.permissions()) & 0o777;
                if mode & 0o077 != 0 {
                    tracing::warn!(
                        path = %path.display(),
                        mode = %format!("{mode:o}"),
                        "the admin token file can be read by other users: chmod 600 it (or set server.admin_token)"
                    );
                }
            }
            return Ok(token.trim().to_string());
        }
        Ok(_) => anyhow::bail!("{} is empty: delete it to generate a new token", path.display()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error).with_context(|| format!("cannot read {}", path.display())),
    }
    let mut bytes = [0u8; 24];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut bytes)
        .context("cannot read /dev/urandom for the admin token")?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::create_dir_all(&config.baseline.models_dir)
        .with_context(|| format!("cannot create {}", config.baseline.models_dir.display()))?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&path).with_context(|| format!("cannot write {}", path.display()))?;
    std::io::Write::write_all(&mut file, format!("{token}\n").as_bytes())?;
    tracing::info!(path = %path.display(), "admin token generated for API writes (stormwatch baseline reads it from there)");
    Ok(token)
}
