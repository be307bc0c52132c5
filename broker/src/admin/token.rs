//! The bearer token the admin API requires: read from `admin.token_file`, read again when the
//! file changes (see [`crate::reload`]), compared in constant time.

use crate::reload::{Reload, WatchedFiles};
use arc_swap::ArcSwap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why the token file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// It cannot be read.
    #[error("admin.token_file: cannot read {}: {source}; check the path and that the broker may read it", path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// It holds no token, or one too short to be a secret.
    #[error("admin.token_file: {} holds {len} characters after trimming; write a random token of at least {MIN_LEN} (e.g. `openssl rand -hex 32`)", path.display())]
    TooShort {
        /// The file.
        path: PathBuf,
        /// The token's length.
        len: usize,
    },
}

/// Shortest token accepted.
pub const MIN_LEN: usize = 16;

/// The admin API's token, as last read.
pub struct AdminToken {
    path: PathBuf,
    files: WatchedFiles,
    current: ArcSwap<Vec<u8>>,
}

impl AdminToken {
    /// Reads the token in `path`.
    pub fn load(path: &Path) -> Result<AdminToken, TokenError> {
        let (files, contents) =
            WatchedFiles::read(vec![path.to_path_buf()]).map_err(|e| TokenError::Unreadable {
                path: e.path,
                source: e.source,
            })?;
        let token = token_in(
            path,
            contents.first().map(Vec::as_slice).unwrap_or_default(),
        )?;
        Ok(AdminToken {
            path: path.to_path_buf(),
            files,
            current: ArcSwap::from_pointee(token),
        })
    }

    /// Whether `presented` is the token.
    pub fn accepts(&self, presented: &[u8]) -> bool {
        let token = self.current.load();
        presented.len() == token.len()
            && presented
                .iter()
                .zip(token.iter())
                .fold(0u8, |differ, (a, b)| differ | (a ^ b))
                == 0
    }
}

/// The token a file holds: its contents without surrounding whitespace.
fn token_in(path: &Path, contents: &[u8]) -> Result<Vec<u8>, TokenError> {
    let token = contents.trim_ascii().to_vec();
    if token.len() < MIN_LEN {
        return Err(TokenError::TooShort {
            path: path.to_path_buf(),
            len: token.len(),
        });
    }
    Ok(token)
}

impl Reload for AdminToken {
    fn what(&self) -> &'static str {
        "admin-token"
    }

    fn reload_if_changed(&self) -> Result<bool, String> {
        let Some(contents) = self.files.changed().map_err(|e| e.to_string())? else {
            return Ok(false);
        };
        let token = token_in(
            &self.path,
            contents.first().map(Vec::as_slice).unwrap_or_default(),
        )
        .map_err(|e| format!("{e}; the token read before stays in force"))?;
        self.current.store(Arc::new(token));
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_trimmed_checked_and_compared_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        std::fs::write(&path, "short\n").expect("write");
        let err = AdminToken::load(&path).err().expect("too short");
        assert!(err.to_string().contains("at least 16"), "{err}");
        std::fs::write(&path, "  0123456789abcdef0123\n").expect("write");
        let token = AdminToken::load(&path).expect("token");
        assert!(token.accepts(b"0123456789abcdef0123"));
        assert!(!token.accepts(b"0123456789abcdef012"));
        assert!(!token.accepts(b"0123456789abcdef0124"));
        assert!(!token.accepts(b""));
        std::fs::write(&path, "fedcba9876543210fedc").expect("write");
        assert_eq!(token.reload_if_changed(), Ok(true));
        assert!(token.accepts(b"fedcba9876543210fedc"));
        assert!(!token.accepts(b"0123456789abcdef0123"));
    }
}
