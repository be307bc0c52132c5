//! Child processes that are killed when their handle drops, and small helpers to start them.

use anyhow::{Context, Result};
use std::future::Future;
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};

/// Where processes started from now on write their output, instead of `E2E_LOG_DIR`.
static LOG_DIR: std::sync::Mutex<Option<std::path::PathBuf>> = std::sync::Mutex::new(None);

/// Sends the output of processes started from now on to `<dir>/<name>.log` (`None`: back to
/// `E2E_LOG_DIR`, or none), e.g. one directory per test run.
pub fn log_to(dir: Option<std::path::PathBuf>) {
    *LOG_DIR
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner()) = dir;
}

/// A child process killed (SIGKILL) when dropped. Its output goes to the test's own output
/// when `E2E_SHOW_OUTPUT` is set, is appended to `<dir>/<name>.log` when `E2E_LOG_DIR` (or
/// [`log_to`]) names a directory, and is otherwise kept in a temporary file whose last lines
/// are printed if the test fails (dropped while panicking), so that a failure seen once in CI
/// comes with the processes' own account of it.
pub struct Process {
    name: String,
    child: Option<Child>,
    scratch_log: Option<tempfile::NamedTempFile>,
}

/// Lines of a process's output printed when the test that ran it fails.
const TAIL_LINES: usize = 60;

impl Process {
    /// Spawns `program` with `args`.
    pub fn spawn(name: &str, program: &str, args: &[&str]) -> Result<Self> {
        let show = std::env::var_os("E2E_SHOW_OUTPUT").is_some();
        let dir = LOG_DIR
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
            .or_else(|| std::env::var_os("E2E_LOG_DIR").map(std::path::PathBuf::from));
        let mut scratch_log = None;
        let log = match dir {
            None if !show => {
                let scratch = tempfile::NamedTempFile::new()
                    .context("creating a temporary file for the process's output")?;
                let file = scratch
                    .reopen()
                    .context("opening the temporary output file")?;
                scratch_log = Some(scratch);
                Some(file)
            }
            Some(dir) => {
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                let path = std::path::Path::new(&dir).join(format!("{name}.log"));
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .with_context(|| format!("opening {}", path.display()))?;
                Some(file)
            }
            None => None,
        };
        let output = || -> Result<Stdio> {
            Ok(match &log {
                Some(file) => Stdio::from(file.try_clone()?),
                None if show => Stdio::inherit(),
                None => Stdio::null(),
            })
        };
        let child = Command::new(program)
            .args(args)
            // The broker reads every STARLING_* variable as configuration, and refuses to start
            // on one it does not know: this one is the harness's own (see `broker_binary`).
            .env_remove("STARLING_BROKER_BIN")
            .stdin(Stdio::null())
            .stdout(output()?)
            .stderr(output()?)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {program}"))?;
        Ok(Process {
            name: name.to_string(),
            child: Some(child),
            scratch_log,
        })
    }

    /// Kills the process now.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Err(e) = child.start_kill() {
                eprintln!("killing {}: {e}", self.name);
            }
        }
    }
}

impl Process {
    /// Stops the process (SIGSTOP) until [`Self::resume`]: it keeps its sockets open but
    /// answers nothing, like a stalled server.
    pub fn pause(&self) -> Result<()> {
        self.signal(libc::SIGSTOP)
    }

    /// Lets a paused process run again (SIGCONT).
    pub fn resume(&self) -> Result<()> {
        self.signal(libc::SIGCONT)
    }

    /// Asks the process to shut down (SIGTERM); [`Self::wait`] waits until it has.
    pub fn terminate(&self) -> Result<()> {
        self.signal(libc::SIGTERM)
    }

    /// Whether the process was started and has not been waited for or killed by this handle.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Waits at most `within` for the process to exit and returns how it ended.
    pub async fn wait(&mut self, within: Duration) -> Result<std::process::ExitStatus> {
        let child = self
            .child
            .as_mut()
            .with_context(|| format!("{} is not running", self.name))?;
        let status = tokio::time::timeout(within, child.wait())
            .await
            .with_context(|| format!("{} did not exit within {within:?}", self.name))?
            .with_context(|| format!("waiting for {}", self.name))?;
        self.child = None;
        Ok(status)
    }

    fn signal(&self, signal: libc::c_int) -> Result<()> {
        let pid = self
            .child
            .as_ref()
            .and_then(Child::id)
            .with_context(|| format!("{} is not running", self.name))?;
        let pid = libc::pid_t::try_from(pid).context("process id out of range")?;
        // SAFETY: kill(2) only sends a signal to our own child; it touches no memory of ours.
        if unsafe { libc::kill(pid, signal) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("signalling {}", self.name));
        }
        Ok(())
    }

    /// Kills the process and waits until it is gone (its ports are free again).
    pub async fn kill_and_wait(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Err(e) = child.kill().await {
                eprintln!("killing {}: {e}", self.name);
            }
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            self.print_tail();
        }
    }
}

impl Process {
    /// Prints the last lines of the output kept in the temporary file, if any.
    fn print_tail(&self) {
        let Some(scratch) = &self.scratch_log else {
            return;
        };
        let text = match std::fs::read(scratch.path()) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) => {
                eprintln!("--- {}: its output could not be read: {e}", self.name);
                return;
            }
        };
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(TAIL_LINES);
        eprintln!(
            "--- {}: last {} of {} lines of its output ---",
            self.name,
            lines.len() - from,
            lines.len()
        );
        for line in &lines[from..] {
            eprintln!("{line}");
        }
    }
}

/// A loopback port that was free a moment ago (bound to port 0, then released), and never
/// handed out before by this process: the system may offer a port it just released again, and
/// two servers of one test must not be given the same.
pub fn free_port() -> Result<u16> {
    loop {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let mut handed_out = HANDED_OUT
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if !handed_out.contains(&port) {
            handed_out.push(port);
            return Ok(port);
        }
    }
}

/// Ports handed out by [`free_port`] and [`free_port_pair`].
static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());

/// A loopback port `p` such that `p` and `p + offset` were both free a moment ago and neither
/// was handed out before (as [`free_port`]), e.g. a Redis Cluster node's client port and its
/// cluster bus port (`p + 10000`). Gives up after 1000 tries.
pub fn free_port_pair(offset: u16) -> Result<u16> {
    for _ in 0..1000 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let Some(other) = port.checked_add(offset) else {
            continue;
        };
        if std::net::TcpListener::bind(("127.0.0.1", other)).is_err() {
            continue;
        }
        let mut handed_out = HANDED_OUT
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if !handed_out.contains(&port) && !handed_out.contains(&other) {
            handed_out.extend([port, other]);
            return Ok(port);
        }
    }
    anyhow::bail!("found no free port p with p + {offset} free as well")
}

/// Retries `probe` until it succeeds or `limit` passes; returns the last error on timeout.
pub async fn wait_for<F, Fut>(limit: Duration, mut probe: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    let mut backoff = Duration::from_millis(5);
    loop {
        match probe().await {
            Ok(()) => return Ok(()),
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(e.context(format!("not ready within {limit:?}")))
            }
            // Polling a process that gives no other readiness signal: back off between probes.
            Err(_) => tokio::time::sleep(backoff).await,
        }
        backoff = (backoff * 2).min(Duration::from_millis(100));
    }
}
