//! Authentication (users with hashed passwords) and authorisation (topic ACLs).
//!
//! # Password file (`auth.password_file`)
//!
//! One user per line as `username:hash`, where `hash` is an argon2 PHC string
//! (`$argon2id$v=19$m=...,t=...,p=...$salt$hash`) as produced by
//! [`hash_password`]. Blank lines and lines starting with `#` are ignored.
//! The hash is split off at the *last* `:`, so usernames may contain `:`.
//!
//! A CONNECT without a username is accepted only when `allow_anonymous` is
//! set. A CONNECT with a username must carry that user's password. Without a
//! password file there is no user database and usernames are not checked.
//!
//! A client on a TLS listener with `username_from_certificate` set that presents a verified
//! certificate is not checked here: it is authenticated by the certificate, under the name the
//! certificate gives (see [`crate::listener::peer_identity`]), and the ACL applies to that name.
//!
//! # ACL file (`auth.acl_file`)
//!
//! Without an ACL file every client may publish and subscribe anywhere. With
//! one, anything not granted by a rule is denied. Lines (blank lines and `#`
//! comments ignored; a `#` later in a line is part of it, as in `topic a/#`):
//!
//! ```text
//! # Rules before any `user` line apply to every client, anonymous ones too.
//! topic read $SYS/#
//! # The rules after `user alice` apply to user `alice` only.
//! user alice
//! # Access defaults to readwrite.
//! topic sensors/#
//! topic write commands/+/set
//! user bob
//! topic read sensors/+/temp
//! # Patterns apply to every client wherever they appear in the file:
//! # %c is replaced by the client id, %u by the username.
//! pattern readwrite clients/%c/#
//! # A pattern with %u never matches anonymous clients.
//! pattern read users/%u/inbox
//! ```
//!
//! `topic`/`pattern` take an optional access (`read`, `write` or `readwrite`)
//! and a topic filter (the rest of the line). A publish is allowed when some
//! applicable write rule's filter matches the topic; a subscription is allowed
//! when some applicable read rule's filter matches every topic the requested
//! filter could match (rule `a/#` covers `a/+/b`; rule `a/+` does not cover
//! `a/#`). Filters whose first level is a wildcard never match `$` topics.
//!
//! A pattern is ignored for a client whose substituted id or username is
//! empty, starts with `$` or contains `+`, `#`, `/` or NUL, so such names can
//! never widen what a pattern grants.

mod acl;
mod live;
mod passwords;
mod verified;

pub use live::LiveAuth;
pub use passwords::hash_password;

use acl::Acl;
use passwords::Passwords;
use starling_config::AuthConfig;
use std::fmt;
use std::path::{Path, PathBuf};

/// Why the auth files could not be loaded, or a password could not be hashed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// A configured file could not be read.
    #[error("cannot read {}: {cause}; check the path in the `[auth]` config and that the broker may read the file", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        cause: std::io::Error,
    },
    /// A line of a password or ACL file is malformed.
    #[error("{}, line {line}: {problem}; {fix}", path.display())]
    Line {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        problem: String,
        /// How to fix it.
        fix: String,
    },
    /// A password-file line has a hash that is not a usable argon2 PHC string.
    #[error("{}, line {line}: the hash of user `{user}` is not a valid argon2 PHC string ({reason}); regenerate it with `starling-broker passwd`", path.display())]
    BadHash {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The user whose hash is bad.
        user: String,
        /// What the parser reported.
        reason: String,
    },
    /// Hashing a new password failed.
    #[error("cannot hash the password: {0}")]
    Hash(String),
}

/// Where in which file a problem is, for building [`AuthError`]s.
struct At<'a>(&'a Path, usize);

impl At<'_> {
    fn err(&self, problem: impl fmt::Display, fix: impl fmt::Display) -> AuthError {
        let (path, line) = (self.0.to_path_buf(), self.1);
        let (problem, fix) = (problem.to_string(), fix.to_string());
        AuthError::Line {
            path,
            line,
            problem,
            fix,
        }
    }
}

/// Non-blank, non-comment lines of a file, trimmed, with their 1-based number.
fn content_lines<'a>(path: &'a Path, text: &'a str) -> impl Iterator<Item = (At<'a>, &'a str)> {
    let lines = text.lines().enumerate().map(|(i, raw)| (i + 1, raw.trim()));
    lines
        .filter(|(_, line)| !line.is_empty() && !line.starts_with('#'))
        .map(move |(number, line)| (At(path, number), line))
}

fn read_file(path: &Path) -> Result<String, AuthError> {
    std::fs::read_to_string(path).map_err(|cause| AuthError::Read {
        path: path.to_path_buf(),
        cause,
    })
}

/// Why a client was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// Unknown user, wrong or missing password.
    BadCredentials,
    /// The client is not allowed in (anonymous while anonymous access is off).
    NotAuthorized,
}

/// The loaded users and access rules; cheap to share behind an `Arc`.
pub struct Auth {
    allow_anonymous: bool,
    passwords: Option<Passwords>,
    acl: Option<Acl>,
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the hashes.
        f.debug_struct("Auth")
            .field("allow_anonymous", &self.allow_anonymous)
            .field("users", &self.passwords.as_ref().map(Passwords::len))
            .field("acl", &self.acl.is_some())
            .finish()
    }
}

impl Auth {
    /// Loads the password and ACL files named in `config` (each optional).
    pub fn load(config: &AuthConfig) -> Result<Auth, AuthError> {
        let passwords = match &config.password_file {
            Some(path) => Some((path.as_path(), read_file(path)?)),
            None => None,
        };
        let acl = match &config.acl_file {
            Some(path) => Some((path.as_path(), read_file(path)?)),
            None => None,
        };
        Auth::parse(
            config.allow_anonymous,
            passwords.as_ref().map(|(p, t)| (*p, t.as_str())),
            acl.as_ref().map(|(p, t)| (*p, t.as_str())),
        )
    }

    /// The rules in a password file's and an ACL file's text (each optional, with its path for
    /// errors).
    pub fn parse(
        allow_anonymous: bool,
        passwords: Option<(&Path, &str)>,
        acl: Option<(&Path, &str)>,
    ) -> Result<Auth, AuthError> {
        let passwords = match passwords {
            Some((path, text)) => Some(Passwords::parse(path, text)?),
            None => None,
        };
        let acl = match acl {
            Some((path, text)) => Some(Acl::parse(path, text)?),
            None => None,
        };
        tracing::debug!(users = ?passwords.as_ref().map(Passwords::len), "auth files loaded");
        Ok(Auth {
            allow_anonymous,
            passwords,
            acl,
        })
    }

    /// Lets everyone in and allows everything: anonymous access, no users, no ACL.
    pub fn allow_all() -> Auth {
        Auth {
            allow_anonymous: true,
            passwords: None,
            acl: None,
        }
    }

    /// Checks a CONNECT's credentials. Ok(()) when allowed.
    ///
    /// Slow (one argon2 verification) when a username is given and a password
    /// file is loaded.
    pub fn authenticate(
        &self,
        username: Option<&str>,
        password: Option<&[u8]>,
    ) -> Result<(), AuthFailure> {
        match (username, &self.passwords) {
            (None, _) if self.allow_anonymous => Ok(()),
            (None, _) => Err(AuthFailure::NotAuthorized),
            (Some(_), None) => Ok(()),
            (Some(user), Some(db)) => match password {
                Some(pw) if db.verify(user, pw) => Ok(()),
                _ => Err(AuthFailure::BadCredentials),
            },
        }
    }

    /// Whether these credentials were accepted lately (no argon2 needed: see
    /// [`verified`]); `authenticate` would accept them.
    pub fn verified_before(&self, username: Option<&str>, password: Option<&[u8]>) -> bool {
        match (username, password, &self.passwords) {
            (Some(user), Some(pw), Some(db)) => db.verified_before(user, pw),
            _ => false,
        }
    }

    /// Whether credentials are checked against a password file (which costs CPU time per CONNECT).
    pub fn checks_passwords(&self) -> bool {
        self.passwords.is_some()
    }

    /// May this client publish to `topic` (a topic name, no wildcards)?
    pub fn can_publish(&self, client_id: &str, username: Option<&str>, topic: &str) -> bool {
        self.acl.as_ref().is_none_or(|acl| {
            !topic.contains(['+', '#']) && acl.allows(client_id, username, true, topic)
        })
    }

    /// May this client subscribe to `filter` (without any `$share/group/` prefix)?
    pub fn can_subscribe(&self, client_id: &str, username: Option<&str>, filter: &str) -> bool {
        let acl = self.acl.as_ref();
        acl.is_none_or(|acl| acl.allows(client_id, username, false, filter))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::password_hash::{PasswordHasher, SaltString};
    use std::io::Write;
    use tempfile::NamedTempFile;

    /// A cheap argon2id hash so tests stay fast; verification reads the cost from it.
    fn cheap_hash(password: &str) -> String {
        let params = argon2::Params::new(8, 1, 1, None).unwrap();
        let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, Default::default(), params);
        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        let hash = argon.hash_password(password.as_bytes(), &salt);
        hash.unwrap().to_string()
    }

    fn file(text: &str) -> NamedTempFile {
        let mut f = NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    fn load(anon: bool, passwords: Option<&str>, acl: Option<&str>) -> Result<Auth, AuthError> {
        let (pw, acl) = (passwords.map(file), acl.map(file));
        Auth::load(&AuthConfig {
            allow_anonymous: anon,
            password_file: pw.as_ref().map(|f| f.path().to_path_buf()),
            acl_file: acl.as_ref().map(|f| f.path().to_path_buf()),
        })
    }

    fn with_users(anon: bool) -> Auth {
        let text = format!(
            "# users\n\nalice:{}\nbob:{}\n",
            cheap_hash("pw"),
            cheap_hash("b")
        );
        load(anon, Some(&text), None).unwrap()
    }

    const BAD: Result<(), AuthFailure> = Err(AuthFailure::BadCredentials);

    #[test]
    fn passwords_accept_reject_and_unknown_users() {
        let auth = with_users(false);
        assert_eq!(auth.authenticate(Some("alice"), Some(b"pw")), Ok(()));
        assert_eq!(auth.authenticate(Some("bob"), Some(b"b")), Ok(()));
        assert_eq!(auth.authenticate(Some("alice"), Some(b"b")), BAD);
        assert_eq!(auth.authenticate(Some("alice"), None), BAD);
        assert_eq!(auth.authenticate(Some("carol"), Some(b"pw")), BAD);
        assert!(
            !format!("{auth:?}").contains("argon2"),
            "Debug shows hashes"
        );
    }

    #[test]
    fn a_password_verified_once_is_known_until_the_file_is_reloaded() {
        let auth = with_users(false);
        assert!(!auth.verified_before(Some("alice"), Some(b"pw")));
        assert_eq!(auth.authenticate(Some("alice"), Some(b"b")), BAD);
        assert!(
            !auth.verified_before(Some("alice"), Some(b"b")),
            "a failure is never remembered"
        );
        assert_eq!(auth.authenticate(Some("alice"), Some(b"pw")), Ok(()));
        assert!(auth.verified_before(Some("alice"), Some(b"pw")));
        assert!(!auth.verified_before(Some("alice"), Some(b"pw!")));
        assert!(!auth.verified_before(Some("bob"), Some(b"pw")));
        assert!(!auth.verified_before(Some("alice"), None));
        // A reloaded file (a changed password, a removed user) starts with nothing remembered.
        let reloaded = with_users(false);
        assert!(!reloaded.verified_before(Some("alice"), Some(b"pw")));
    }

    #[test]
    fn anonymous_on_and_off() {
        let refused = Err(AuthFailure::NotAuthorized);
        assert_eq!(with_users(false).authenticate(None, None), refused);
        assert_eq!(with_users(true).authenticate(None, None), Ok(()));
        assert_eq!(with_users(true).authenticate(Some("alice"), None), BAD);
        // Without a password file usernames are not checked.
        let no_users = load(false, None, None).unwrap();
        assert_eq!(no_users.authenticate(Some("x"), None), Ok(()));
        assert_eq!(no_users.authenticate(None, None), refused);
        assert_eq!(Auth::allow_all().authenticate(None, None), Ok(()));
    }

    #[test]
    fn hash_password_round_trip() {
        let hash = hash_password("s3cret").unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert_ne!(hash, hash_password("s3cret").unwrap(), "same salt");
        let auth = load(false, Some(&format!("dave:{hash}\n")), None).unwrap();
        assert_eq!(auth.authenticate(Some("dave"), Some(b"s3cret")), Ok(()));
        assert_eq!(auth.authenticate(Some("dave"), Some(b"s3creT")), BAD);
    }

    #[test]
    fn parse_errors_name_file_and_line() {
        let (a, b) = (format!("alice:{}\n", cheap_hash("a")), cheap_hash("b"));
        let pbkdf2 = "bob:$pbkdf2-sha256$i=1000$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA";
        let cases = [
            ("pw", format!("# c\n\n{a}carol\n"), 4, "no `:`"),
            ("pw", format!("{a}alice:{b}\n"), 2, "listed twice"),
            ("pw", format!("{a}:{b}\n"), 2, "username is empty"),
            ("pw", "\nbob:$argon2id$x\n".into(), 2, "not a valid argon2"),
            ("pw", pbkdf2.into(), 1, "is not argon2"),
            ("acl", "topic a\nfoo bar\n".into(), 2, "unknown keyword"),
            ("acl", "# x\ntopic read\n".into(), 2, "without a topic"),
            ("acl", "topic a/#/b\n".into(), 1, "invalid topic filter"),
            ("acl", "pattern a/b+\n".into(), 1, "invalid topic filter"),
            ("acl", "topic a\nuser\n".into(), 2, "without a name"),
        ];
        for (kind, text, line, problem) in cases {
            let (f, default) = (file(&text), AuthConfig::default());
            let path = Some(f.path().to_path_buf());
            let config = match kind {
                "pw" => AuthConfig {
                    password_file: path,
                    ..default
                },
                _ => AuthConfig {
                    acl_file: path,
                    ..default
                },
            };
            let err = Auth::load(&config).unwrap_err();
            let (AuthError::Line { line: got, .. } | AuthError::BadHash { line: got, .. }) = err
            else {
                panic!("not a line error: {err}");
            };
            let message = err.to_string();
            assert_eq!(got, line, "{message}");
            assert!(message.contains(problem), "{message}");
            assert!(
                message.contains(&f.path().display().to_string()),
                "{message}"
            );
        }
        let password_file = Some("/nonexistent/passwd".into());
        let missing = AuthConfig {
            password_file,
            ..AuthConfig::default()
        };
        let message = Auth::load(&missing).unwrap_err().to_string();
        assert!(message.contains("/nonexistent/passwd"), "{message}");
    }

    /// Checks comma-separated `[!]pub|sub client[:user] topic`; `!` means denied.
    fn expect(auth: &Auth, cases: &str) {
        for case in cases.split(',').map(str::trim) {
            let words: Vec<&str> = case.split(' ').collect();
            let (op, who, topic) = (words[0], words[1], words[2]);
            let (id, user) = who
                .split_once(':')
                .map_or((who, None), |(c, u)| (c, Some(u)));
            let allowed = match op.trim_start_matches('!') {
                "pub" => auth.can_publish(id, user, topic),
                _ => auth.can_subscribe(id, user, topic),
            };
            assert_eq!(allowed, !op.starts_with('!'), "{case}");
        }
    }

    fn acl(rules: &str) -> Auth {
        load(true, None, Some(rules)).unwrap()
    }

    const ACL: &str = "topic read public/#\nuser alice\ntopic alice/#\ntopic write shared/in\n\
        user bob\ntopic read shared/in\npattern clients/%c/#\npattern read users/%u/inbox\n";

    #[test]
    fn acl_global_rules_user_blocks_and_access() {
        expect(
            &acl(ACL),
            "sub c public/#, sub c:bob public/a/+, !pub c public/a, !sub c alice/#, \
             pub c:alice alice/x, sub c:alice alice/+, pub c:alice shared/in, \
             !sub c:alice shared/in, sub c:bob shared/in, !pub c:bob shared/in, \
             !pub c:bob alice/x, !pub c:alice alice/+, !pub c:alice alice/#",
        );
        // No ACL file: everything allowed; an empty ACL: everything denied.
        expect(&Auth::allow_all(), "pub c $SYS/x, sub c #");
        expect(&acl("# empty\n"), "!sub c:alice a, !pub c a");
    }

    #[test]
    fn acl_patterns_substitute_client_id_and_username() {
        expect(
            &acl(ACL),
            "pub d1 clients/d1/x, sub d1:bob clients/d1/#, !pub d1 clients/d2/x, \
             !sub d1:bob clients/+/x, sub c:carol users/carol/inbox, !sub c users/+/inbox, \
             !pub c:carol users/carol/inbox, !sub c:carol users/dave/inbox, \
             !sub x users/x/inbox",
        );
    }

    #[test]
    fn acl_names_with_wildcards_cannot_widen_patterns() {
        let auth = acl("pattern c/%c/#\npattern read u/%u\npattern %c/#\n");
        expect(&auth, "pub ok c/ok/x, sub c:ok u/ok, pub ok ok/x");
        for id in ["+", "#", "a/b", "x+", "$SYS", ""] {
            let (own_topic, own_user) = (format!("{id}/x"), format!("u/{id}"));
            assert!(!auth.can_publish(id, None, "c/other/x"), "{id:?}");
            assert!(
                !auth.can_publish(id, None, &format!("c/{own_topic}")),
                "{id:?}"
            );
            assert!(!auth.can_publish(id, None, &own_topic), "{id:?}");
            assert!(!auth.can_subscribe("c", Some(id), "u/x"), "{id:?}");
            assert!(!auth.can_subscribe("c", Some(id), &own_user), "{id:?}");
        }
    }

    #[test]
    fn acl_dollar_topics_and_subscription_coverage() {
        expect(
            &acl("topic #\nuser ops\ntopic read $SYS/#\n"),
            "sub c #, pub c a/b, !pub c $SYS/x, !sub c $SYS/#, sub c:ops $SYS/a/+",
        );
        expect(
            &acl("topic read a/#\ntopic read b/+\ntopic read c/d\ntopic read +/e\n"),
            "sub c a/+/b, sub c a, sub c a/#, sub c a/x/y, sub c b/x, sub c b/+, \
             !sub c b/#, !sub c b, !sub c b/x/y, sub c c/d, !sub c c/+, !sub c c/#, \
             !sub c c/d/e, !sub c c, sub c x/e, sub c +/e, !sub c $x/e, !sub c #",
        );
    }
}
