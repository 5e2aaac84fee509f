//! The targets as child processes of this binary: spawning them on free ports, and reading their CPU
//! time, memory and `/metrics` from outside.

use anyhow::Context;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// CPU seconds (user + system) a process has used, from `/proc/PID/stat`.
pub(crate) fn cpu_seconds(pid: u32, ticks_per_second: f64) -> Option<f64> {
    stat_cpu_seconds(Path::new(&format!("/proc/{pid}/stat")), ticks_per_second)
}

/// User plus system time in a `/proc` `stat` file (a process's or a thread's), in seconds.
fn stat_cpu_seconds(stat: &Path, ticks_per_second: f64) -> Option<f64> {
    let stat = std::fs::read_to_string(stat).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / ticks_per_second)
}

/// CPU seconds (user + system) the thread of process `pid` named `name` has used, from
/// `/proc/PID/task/TID/stat` (`name` as the kernel keeps it: its first 15 bytes).
pub(crate) fn thread_cpu_seconds(pid: u32, name: &str, ticks_per_second: f64) -> Option<f64> {
    let kept = &name[..name.len().min(15)];
    std::fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten().find_map(|task| {
        let comm = std::fs::read_to_string(task.path().join("comm")).ok()?;
        if comm.trim_end() != kept {
            return None;
        }
        stat_cpu_seconds(&task.path().join("stat"), ticks_per_second)
    })
}

/// Whether a process has exited but not been reaped (its `/proc` times are final).
pub(crate) fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('Z')))
        .unwrap_or(true)
}

/// A `/proc/PID/status` field in bytes (`VmHWM`: peak resident set; `VmRSS`: current).
pub(crate) fn status_bytes(pid: &str, field: &str) -> Option<u64> {
    proc_kilobytes(&format!("/proc/{pid}/status"), field)
}

/// A `field  N kB` line of a `/proc` file, in bytes.
pub(crate) fn proc_kilobytes(path: &str, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().find(|line| line.starts_with(field))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

pub(crate) fn ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8_lossy(&out.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

pub(crate) fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let memory = proc_kilobytes("/proc/meminfo", "MemTotal:")
        .map_or(String::new(), |b| format!(", {:.0} GiB", b as f64 / (1u64 << 30) as f64));
    format!("{cpus} CPUs ({model}){memory}")
}

pub(crate) fn free_address() -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?;
    Ok(listener.local_addr()?)
}

/// Listen addresses for one child, on free ports.
pub(crate) struct Listeners {
    pub(crate) grpc: SocketAddr,
    pub(crate) http: SocketAddr,
    pub(crate) admin: SocketAddr,
}

impl Listeners {
    fn free() -> anyhow::Result<Listeners> {
        Ok(Listeners { grpc: free_address()?, http: free_address()?, admin: free_address()? })
    }
}

/// Starts a child on free ports and waits until it listens on `wait_for` of them. A port found
/// free can be taken by another process before the child binds it: then it tries other ports.
pub(crate) async fn spawn_listening(
    name: &'static str,
    dir: &Path,
    args_for: impl Fn(&Listeners) -> anyhow::Result<Vec<String>>,
    wait_for: impl Fn(&Listeners) -> Vec<SocketAddr>,
) -> anyhow::Result<(Target, Listeners)> {
    let mut attempt = 1;
    loop {
        let listeners = Listeners::free()?;
        let mut target = Target::spawn(name, &args_for(&listeners)?, dir)?;
        let mut failure = None;
        for address in wait_for(&listeners) {
            if let Err(error) = target.wait_listening(address).await {
                failure = Some(error);
                break;
            }
        }
        match failure {
            None => return Ok((target, listeners)),
            Some(error) if attempt < 5 && format!("{error:#}").contains("Address already in use") => {
                target.stop();
                attempt += 1;
            }
            Some(error) => return Err(error),
        }
    }
}

/// `serve` with `config` (written here), its own models directory, and `listeners`.
pub(crate) fn serve_args(
    dir: &Path,
    name: &str,
    config: &str,
    listeners: &Listeners,
    extra: &[&str],
) -> anyhow::Result<Vec<String>> {
    let config_path = dir.join(format!("{name}.toml"));
    std::fs::write(&config_path, config)?;
    let mut args: Vec<String> = vec![
        "serve".into(),
        "--config".into(),
        config_path.display().to_string(),
        "--models".into(),
        dir.join(format!("models-{name}")).display().to_string(),
        "--otlp-grpc".into(),
        listeners.grpc.to_string(),
        "--otlp-http".into(),
        listeners.http.to_string(),
        "--admin".into(),
        listeners.admin.to_string(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    Ok(args)
}

/// A child process of this binary, its stderr in a log file shown when it fails.
pub(crate) struct Target {
    pub(crate) child: Child,
    pub(crate) log: PathBuf,
    pub(crate) name: &'static str,
}

impl Target {
    pub(crate) fn spawn(name: &'static str, args: &[String], dir: &Path) -> anyhow::Result<Target> {
        let exe = std::env::current_exe().context("cannot find the stormwatch binary")?;
        let log = dir.join(format!("{name}.log"));
        let stderr = std::fs::File::create(&log)?;
        let mut command = std::process::Command::new(exe);
        command.args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(stderr);
        for (key, _) in std::env::vars() {
            if key.starts_with("STORMWATCH_") {
                command.env_remove(key);
            }
        }
        command.env("RUST_LOG", "warn");
        let child = command.spawn().with_context(|| format!("cannot start the {name}"))?;
        Ok(Target { child, log, name })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn failure(&mut self, what: &str) -> anyhow::Error {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let status = self.child.try_wait().ok().flatten().map_or("running".to_string(), |s| s.to_string());
        anyhow::anyhow!("{}: {what} (process {status}); its log:\n{}", self.name, log.trim_end())
    }

    pub(crate) async fn wait_listening(&mut self, address: SocketAddr) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if tokio::net::TcpStream::connect(address).await.is_ok() {
                return Ok(());
            }
            if self.child.try_wait()?.is_some() {
                return Err(self.failure("exited before listening"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(self.failure(&format!("not listening on {address} after 20 s")))
    }

    pub(crate) fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One value of the engine's Prometheus metrics.
pub(crate) async fn metric(admin: SocketAddr, name: &str) -> Option<f64> {
    let mut stream = tokio::net::TcpStream::connect(admin).await.ok()?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).await.ok()?;
    text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

pub(crate) fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let stamp = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let dir = std::env::temp_dir().join(format!("stormwatch-bench-{}-{stamp}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}
