//! Files of the engine's that are its owner's only: what it learned, its tuning, its alerts.

/// Creates (or truncates) `path` readable and writable by its owner only (mode 0600): the
/// engine's files hold what it learned, the tuning and its alerts.
pub fn create_private_file(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let file = options.open(path)?;
    // An existing file keeps its mode through `open`: set it.
    #[cfg(unix)]
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    Ok(file)
}

/// Writes `bytes` to a new private file at `path` ([`create_private_file`]) and syncs it.
pub fn write_private_file(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = create_private_file(path)?;
    std::io::Write::write_all(&mut file, bytes)?;
    file.sync_all()
}
