//! Passwords in Redis URLs: put in (from a password file) and kept out of anything printed.

use crate::ConfigError;
use url::Url;

/// `url` (`redis://` or `rediss://`) with `password` as its password (percent-encoded),
/// replacing any there and keeping the user name.
pub fn with_password(url: &str, password: &str) -> Result<String, ConfigError> {
    let mut parsed = parse(url)?;
    parsed
        .set_password(Some(password))
        .map_err(|()| invalid(url, "it has no host to go with a password"))?;
    Ok(parsed.into())
}

/// `url` with its password, if any, replaced by `REDACTED`, for printing. A URL that does not
/// parse is replaced whole: it may hold a password in a form not recognised.
pub fn redacted(url: &str) -> String {
    let Ok(mut parsed) = parse(url) else {
        return "REDACTED (not a redis:// URL)".to_string();
    };
    if parsed.password().is_some() && parsed.set_password(Some("REDACTED")).is_err() {
        return "REDACTED".to_string();
    }
    parsed.into()
}

fn parse(url: &str) -> Result<Url, ConfigError> {
    let parsed = Url::parse(url).map_err(|e| invalid(url, &e.to_string()))?;
    if !matches!(parsed.scheme(), "redis" | "rediss") || !parsed.has_host() {
        return Err(invalid(
            url,
            "it is not a redis:// or rediss:// URL with a host",
        ));
    }
    Ok(parsed)
}

fn invalid(url: &str, problem: &str) -> ConfigError {
    let shown = if url.contains('@') {
        "(hidden: it may hold a password)"
    } else {
        url
    };
    ConfigError::Invalid {
        field: "cluster.redis_url",
        problem: format!("{shown}: {problem}"),
        fix: "write it as redis://[user[:password]@]host[:port][/db] or rediss://...",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_goes_into_the_url_encoded() {
        assert_eq!(
            with_password("redis://redis:6379/0", "p@ss word").expect("url"),
            "redis://:p%40ss%20word@redis:6379/0"
        );
        assert_eq!(
            with_password("rediss://app:old@host:6380", "new").expect("url"),
            "rediss://app:new@host:6380"
        );
        assert!(with_password("host:6379", "x").is_err());
        assert!(with_password("http://host:6379", "x").is_err());
    }

    #[test]
    fn printed_urls_hide_their_password() {
        assert_eq!(
            redacted("redis://:s3cret@127.0.0.1:6379/"),
            "redis://:REDACTED@127.0.0.1:6379/"
        );
        assert_eq!(
            redacted("rediss://app:s3cret@host:6380/2"),
            "rediss://app:REDACTED@host:6380/2"
        );
        assert_eq!(redacted("redis://host:6379"), "redis://host:6379");
        assert!(!redacted("garbage:s3cret@").contains("s3cret"));
    }
}
