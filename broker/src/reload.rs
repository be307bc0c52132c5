//! Files that configure a running broker, reloaded when they change, without dropping a
//! connection: the TLS certificate and key (as cert-manager or a rotated Kubernetes Secret
//! replace them), the TLS listener's client CA bundle, and the password and ACL files.
//!
//! Every `reload.interval_secs` (5 s by default), and at once on `SIGHUP`, each [`Reload`] reads
//! its files again; when
//! their bytes differ from what it last read, it parses them and swaps the new material in.
//! Material that does not parse leaves the old in force, with one error log line naming the
//! file and the fix, and is not tried again until the files change once more. Each outcome is
//! logged and counted in `starling_reloads_total{what, outcome}`. Connections keep what they
//! were admitted with; new handshakes, logins and ACL checks use the new material.

use parking_lot::Mutex;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Something reloadable from files.
pub trait Reload: Send + Sync {
    /// What it is, for logs and the metric's `what` label (`tls`, `auth`).
    fn what(&self) -> &'static str;

    /// Reads the files and, if they changed, swaps in what they hold now: `Ok(true)` if it did,
    /// `Ok(false)` if nothing changed, `Err` (what is wrong and how to fix it) if the new
    /// contents cannot be used and the old material stays in force.
    fn reload_if_changed(&self) -> Result<bool, String>;
}

/// The contents of a set of files as last read, to tell when they change.
pub struct WatchedFiles {
    paths: Vec<PathBuf>,
    seen: Mutex<Vec<Vec<u8>>>,
}

/// A watched file could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {}: {source}", path.display())]
pub struct Unreadable {
    /// The file.
    pub path: PathBuf,
    /// Why.
    #[source]
    pub source: io::Error,
}

impl WatchedFiles {
    /// Reads `paths` now: the contents to load at start, and what later reads compare with.
    pub fn read(paths: Vec<PathBuf>) -> Result<(WatchedFiles, Vec<Vec<u8>>), Unreadable> {
        let contents = read_all(&paths)?;
        let files = WatchedFiles {
            paths,
            seen: Mutex::new(contents.clone()),
        };
        Ok((files, contents))
    }

    /// The files' contents if any differs from the last read (which they then become); `None`
    /// if all are the same. A file that cannot be read is an error and changes nothing, so the
    /// next check reads it again.
    pub fn changed(&self) -> Result<Option<Vec<Vec<u8>>>, Unreadable> {
        let contents = read_all(&self.paths)?;
        let mut seen = self.seen.lock();
        if *seen == contents {
            return Ok(None);
        }
        seen.clone_from(&contents);
        Ok(Some(contents))
    }

    /// The files watched.
    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }
}

fn read_all(paths: &[PathBuf]) -> Result<Vec<Vec<u8>>, Unreadable> {
    paths.iter().map(|path| read(path)).collect()
}

fn read(path: &Path) -> Result<Vec<u8>, Unreadable> {
    std::fs::read(path).map_err(|source| Unreadable {
        path: path.to_path_buf(),
        source,
    })
}

/// Checks every reloadable every `interval` (never, when `None`) and on `SIGHUP`, until the
/// process ends. (With nothing to reload it still takes `SIGHUP`, which would otherwise end the
/// process.)
pub async fn watch(
    reloadables: Vec<Arc<dyn Reload>>,
    metrics: Arc<crate::metrics::Metrics>,
    interval: Option<Duration>,
) {
    let mut tick = tokio::time::interval(interval.unwrap_or(Duration::from_secs(86_400)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is at once: the files were just read.
    tick.tick().await;
    let mut hangups = hangups();
    // The same failure is logged once, not at every check.
    let mut last_failure: Vec<Option<String>> = vec![None; reloadables.len()];
    loop {
        let asked = tokio::select! {
            _ = tick.tick(), if interval.is_some() => false,
            () = next_hangup(&mut hangups) => true,
        };
        if asked {
            tracing::info!("SIGHUP: checking TLS, password and ACL files for changes");
        }
        for (reloadable, last) in reloadables.iter().zip(last_failure.iter_mut()) {
            let what = reloadable.what();
            let checking = reloadable.clone();
            let outcome = tokio::task::spawn_blocking(move || checking.reload_if_changed())
                .await
                .unwrap_or_else(|e| Err(format!("the reload task failed: {e}")));
            match outcome {
                Ok(false) => {}
                Ok(true) => {
                    *last = None;
                    metrics.reloaded(what, true);
                    tracing::info!(what, "reloaded from changed files");
                }
                Err(why) => {
                    if last.as_deref() != Some(why.as_str()) {
                        metrics.reloaded(what, false);
                        tracing::error!(what, error = %why, "changed files not reloaded; the previous ones stay in force");
                        *last = Some(why);
                    }
                }
            }
        }
    }
}

#[cfg(unix)]
type Hangups = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangups = ();

#[cfg(unix)]
fn hangups() -> Hangups {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::hangup()) {
        Ok(stream) => Some(stream),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; files are only checked at reload.interval_secs");
            None
        }
    }
}

#[cfg(not(unix))]
fn hangups() -> Hangups {}

#[cfg(unix)]
async fn next_hangup(hangups: &mut Hangups) {
    match hangups {
        Some(stream) => {
            if stream.recv().await.is_none() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending::<()>().await,
    }
}

#[cfg(not(unix))]
async fn next_hangup(_: &mut Hangups) {
    std::future::pending::<()>().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_is_seen_once_and_an_unreadable_file_is_tried_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("users");
        std::fs::write(&path, "one").expect("write");
        let (files, contents) = WatchedFiles::read(vec![path.clone()]).expect("read");
        assert_eq!(contents, vec![b"one".to_vec()]);
        assert!(files.changed().expect("read").is_none());
        std::fs::write(&path, "two").expect("write");
        assert_eq!(files.changed().expect("read"), Some(vec![b"two".to_vec()]));
        assert!(files.changed().expect("read").is_none());
        std::fs::remove_file(&path).expect("remove");
        let err = files.changed().expect_err("gone");
        assert_eq!(err.path, path);
        std::fs::write(&path, "two").expect("write");
        // Back as it was last read: no change.
        assert!(files.changed().expect("read").is_none());
    }
}
