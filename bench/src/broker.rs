//! Starting the brokers under test and making sure they die with the bench.

use std::fmt;
use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use tempfile::TempDir;

/// How long a freshly started broker gets to accept TCP connections.
const READY_TIMEOUT: Duration = Duration::from_secs(5);

/// The brokers the bench knows how to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BrokerKind {
    Starling,
    Mosquitto,
}

impl fmt::Display for BrokerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BrokerKind::Starling => "starling",
            BrokerKind::Mosquitto => "mosquitto",
        })
    }
}

/// A broker to run: which kind and the executable to start.
#[derive(Debug, Clone)]
pub struct BrokerSpec {
    pub kind: BrokerKind,
    pub bin: PathBuf,
}

/// A running broker child process; dropping it kills and reaps the process.
pub struct BrokerProcess {
    child: Child,
    pub addr: SocketAddr,
    dir: TempDir,
}

impl BrokerProcess {
    /// Starts the broker on a free loopback port and waits until it accepts TCP.
    pub async fn start(spec: &BrokerSpec) -> Result<Self> {
        let addr = free_loopback_addr()?;
        let dir = temp_dir()?;
        let mut cmd = Command::new(&spec.bin);
        match spec.kind {
            BrokerKind::Starling => {
                cmd.arg("--tcp")
                    .arg(addr.to_string())
                    .arg("--no-admin")
                    .arg("--log-level")
                    .arg("warn");
            }
            BrokerKind::Mosquitto => {
                let conf = dir.path().join("mosquitto.conf");
                std::fs::write(&conf, mosquitto_config(addr.port()))
                    .context("writing mosquitto config")?;
                cmd.arg("-c").arg(&conf);
            }
        }
        Self::launch(&spec.kind.to_string(), cmd, addr, dir).await
    }

    /// Spawns `cmd` (a server that will listen on `addr`) with its output in
    /// `dir/broker.log`, and waits until `addr` accepts TCP.
    pub async fn launch(
        name: &str,
        mut cmd: Command,
        addr: SocketAddr,
        dir: TempDir,
    ) -> Result<Self> {
        let log = File::create(dir.path().join("broker.log")).context("creating broker log")?;
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().context("duplicating log handle")?)
            .stderr(log);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name} from {:?}", cmd.get_program()))?;

        let mut broker = BrokerProcess { child, addr, dir };
        if let Err(e) = broker.wait_ready().await {
            bail!("{name} did not become ready: {e:#}{}", broker.log_tail());
        }
        Ok(broker)
    }

    /// Process id of the broker, for `/proc` sampling.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails if the broker process has exited (it should run until dropped).
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait().context("polling broker process")? {
            bail!("broker exited during the run ({status}){}", self.log_tail());
        }
        Ok(())
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().context("polling broker process")? {
                bail!("broker exited at startup ({status})");
            }
            if tokio::net::TcpStream::connect(self.addr).await.is_ok() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("no TCP listener on {} after {:?}", self.addr, READY_TIMEOUT);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The last lines the broker wrote, formatted for an error message.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("broker.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        if lines.is_empty() {
            return String::new();
        }
        let tail = lines[lines.len().saturating_sub(15)..].join("\n  ");
        format!("; broker output:\n  {tail}")
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        // Killing an already exited child fails harmlessly; always reap it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Mosquitto configuration for the bench: anonymous, in-memory, silent.
pub fn mosquitto_config(port: u16) -> String {
    format!(
        "listener {port} 127.0.0.1\n\
         allow_anonymous true\n\
         max_queued_messages 100000\n\
         max_inflight_messages 100\n\
         persistence false\n\
         log_dest none\n"
    )
}

/// A loopback address whose port was free a moment ago (bound to port 0, then released), and
/// never handed out before by this process: the system may offer a port it just released
/// again, and two servers of one run must not be given the same.
pub fn free_loopback_addr() -> Result<SocketAddr> {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding a probe port")?;
        let addr = listener.local_addr().context("reading the probe port")?;
        let mut handed_out = HANDED_OUT
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if !handed_out.contains(&addr.port()) {
            handed_out.push(addr.port());
            return Ok(addr);
        }
    }
}

/// A fresh temporary directory for one server's files.
pub fn temp_dir() -> Result<TempDir> {
    tempfile::Builder::new()
        .prefix("starling-bench-")
        .tempdir()
        .context("creating a temporary directory")
}

/// Default Starling binary: `<target>/release/starling-broker`, where target is
/// `$CARGO_TARGET_DIR` if set, else `<workspace>/target`.
pub fn default_starling_bin() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
            manifest.parent().unwrap_or(manifest).join("target")
        });
    target.join("release").join("starling-broker")
}

/// Finds an executable given as a path or as a bare name looked up in `$PATH`.
pub fn resolve_bin(bin: &Path) -> Option<PathBuf> {
    if bin.components().count() > 1 {
        return bin.is_file().then(|| bin.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(bin))
        .find(|candidate| candidate.is_file())
}

/// Raises the open-file limit (inherited by the brokers) to at least `want`,
/// lifting the hard limit too when permitted. Returns the new soft limit.
pub fn raise_nofile_limit(want: u64) -> Result<u64> {
    let nofile = rlimit::Resource::NOFILE;
    let (_, hard) = nofile.get().context("reading RLIMIT_NOFILE")?;
    let target = hard.max(want);
    if nofile.set(target, target).is_ok() {
        return Ok(target);
    }
    nofile
        .set(hard, hard)
        .context("raising RLIMIT_NOFILE to the hard limit")?;
    eprintln!("warning: open-file limit is {hard} (could not raise it to {want})");
    Ok(hard)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mosquitto_config_has_the_required_settings() {
        let conf = mosquitto_config(18830);
        for line in [
            "listener 18830 127.0.0.1",
            "allow_anonymous true",
            "max_queued_messages 100000",
            "max_inflight_messages 100",
            "persistence false",
            "log_dest none",
        ] {
            assert!(conf.lines().any(|l| l == line), "missing {line:?}");
        }
    }
}
