//! The users and access rules in force, swapped whole when the password or ACL file changes (see
//! [`crate::reload`]). A login or ACL check reads the rules current at that moment; a client
//! already connected stays connected.

use super::{Auth, AuthError};
use crate::reload::{Reload, WatchedFiles};
use arc_swap::{ArcSwap, Guard};
use starling_config::AuthConfig;
use std::path::PathBuf;
use std::sync::Arc;

/// The [`Auth`] in force, and the files it came from.
pub struct LiveAuth {
    config: AuthConfig,
    /// The password and ACL files (those configured), `None` for fixed rules.
    files: Option<WatchedFiles>,
    current: ArcSwap<Auth>,
}

impl LiveAuth {
    /// Loads the files `config` names; they are watched from now on.
    pub fn load(config: &AuthConfig) -> Result<LiveAuth, AuthError> {
        let paths: Vec<PathBuf> = [&config.password_file, &config.acl_file]
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        let (files, contents) = WatchedFiles::read(paths).map_err(|e| AuthError::Read {
            path: e.path,
            cause: e.source,
        })?;
        let auth = parse(config, &contents)?;
        Ok(LiveAuth {
            config: config.clone(),
            files: Some(files),
            current: ArcSwap::from_pointee(auth),
        })
    }

    /// Rules that never change (no files behind them).
    pub fn fixed(auth: Auth) -> LiveAuth {
        LiveAuth {
            config: AuthConfig::default(),
            files: None,
            current: ArcSwap::from_pointee(auth),
        }
    }

    /// The rules in force now.
    pub fn current(&self) -> Guard<Arc<Auth>> {
        self.current.load()
    }
}

/// The rules in the files' `contents` (password file first, then the ACL file, each only if
/// configured).
fn parse(config: &AuthConfig, contents: &[Vec<u8>]) -> Result<Auth, AuthError> {
    let mut contents = contents.iter();
    let mut text_of = |path: &Option<PathBuf>| -> Result<Option<(PathBuf, String)>, AuthError> {
        let Some(path) = path else {
            return Ok(None);
        };
        let bytes = contents.next().map(Vec::as_slice).unwrap_or_default();
        let text = String::from_utf8(bytes.to_vec()).map_err(|_| AuthError::Line {
            path: path.clone(),
            line: 0,
            problem: "the file is not UTF-8 text".to_string(),
            fix: "save it as UTF-8".to_string(),
        })?;
        Ok(Some((path.clone(), text)))
    };
    let passwords = text_of(&config.password_file)?;
    let acl = text_of(&config.acl_file)?;
    Auth::parse(
        config.allow_anonymous,
        passwords.as_ref().map(|(p, t)| (p.as_path(), t.as_str())),
        acl.as_ref().map(|(p, t)| (p.as_path(), t.as_str())),
    )
}

impl Reload for LiveAuth {
    fn what(&self) -> &'static str {
        "auth"
    }

    fn reload_if_changed(&self) -> Result<bool, String> {
        let Some(files) = &self.files else {
            return Ok(false);
        };
        let Some(contents) = files.changed().map_err(|e| e.to_string())? else {
            return Ok(false);
        };
        let auth = parse(&self.config, &contents).map_err(|e| {
            format!("{e}; the users and rules loaded before stay in force until the file is fixed")
        })?;
        tracing::info!(auth = ?auth, "auth files reloaded");
        self.current.store(Arc::new(auth));
        Ok(true)
    }
}
