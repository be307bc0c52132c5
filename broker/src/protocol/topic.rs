//! Topic names and topic filters: validation, shared-subscription syntax and matching.

/// Why a topic name or filter is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// Empty where the specification forbids it.
    #[error("empty topic")]
    Empty,
    /// Longer than the configured limit.
    #[error("topic longer than {0} bytes")]
    TooLong(usize),
    /// Contains the NUL character.
    #[error("topic contains U+0000")]
    Nul,
    /// A topic name (not filter) contains `+` or `#`.
    #[error("topic name contains a wildcard")]
    WildcardInName,
    /// `#` not alone in the last level, or `+` not alone in its level.
    #[error("wildcard not alone in its level, or '#' not last")]
    BadWildcard,
    /// `$share/` without a valid group name or filter.
    #[error("malformed shared subscription (expected $share/<group>/<filter>)")]
    BadShare,
}

/// Checks a topic name used in PUBLISH or a will.
pub fn validate_name(topic: &str, max_len: usize) -> Result<(), TopicError> {
    if topic.is_empty() {
        return Err(TopicError::Empty);
    }
    if topic.len() > max_len {
        return Err(TopicError::TooLong(max_len));
    }
    if topic.contains('\0') {
        return Err(TopicError::Nul);
    }
    if topic.contains(['+', '#']) {
        return Err(TopicError::WildcardInName);
    }
    Ok(())
}

/// Checks a topic filter (without any `$share/group/` prefix).
pub fn validate_filter(filter: &str, max_len: usize) -> Result<(), TopicError> {
    if filter.is_empty() {
        return Err(TopicError::Empty);
    }
    if filter.len() > max_len {
        return Err(TopicError::TooLong(max_len));
    }
    if filter.contains('\0') {
        return Err(TopicError::Nul);
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let last = levels.peek().is_none();
        match level {
            "#" if !last => return Err(TopicError::BadWildcard),
            "#" | "+" => {}
            other if other.contains(['+', '#']) => return Err(TopicError::BadWildcard),
            _ => {}
        }
    }
    Ok(())
}

/// A subscription filter, split into its share group (if any) and the topic filter proper.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedFilter<'a> {
    /// The `$share` group name.
    pub group: Option<&'a str>,
    /// The filter that topics are matched against.
    pub filter: &'a str,
}

/// Splits `$share/<group>/<filter>` and validates both parts; plain filters pass through.
pub fn parse_subscription(raw: &str, max_len: usize) -> Result<ParsedFilter<'_>, TopicError> {
    if let Some(rest) = raw.strip_prefix("$share/") {
        let (group, filter) = rest.split_once('/').ok_or(TopicError::BadShare)?;
        if group.is_empty() || group.contains(['+', '#', '\0']) {
            return Err(TopicError::BadShare);
        }
        validate_filter(filter, max_len)?;
        Ok(ParsedFilter {
            group: Some(group),
            filter,
        })
    } else if raw == "$share" {
        Err(TopicError::BadShare)
    } else {
        validate_filter(raw, max_len)?;
        Ok(ParsedFilter {
            group: None,
            filter: raw,
        })
    }
}

/// Whether `topic` is matched by `filter` (both valid). Topics starting with `$` are not matched
/// by a filter whose first level is a wildcard.
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut filter_levels = filter.split('/');
    let mut topic_levels = topic.split('/');
    loop {
        match (filter_levels.next(), topic_levels.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(f), Some(t)) if f == t => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_reject_wildcards_nul_and_length() {
        assert!(validate_name("a/b", 10).is_ok());
        assert_eq!(validate_name("a/+", 10), Err(TopicError::WildcardInName));
        assert_eq!(validate_name("a\0", 10), Err(TopicError::Nul));
        assert_eq!(validate_name("", 10), Err(TopicError::Empty));
        assert_eq!(validate_name("abcdef", 5), Err(TopicError::TooLong(5)));
    }

    #[test]
    fn filters_place_wildcards_correctly() {
        for ok in ["#", "+", "a/#", "+/+/c", "/", "a//b", "sport/+/player1"] {
            assert!(validate_filter(ok, 100).is_ok(), "{ok}");
        }
        for bad in ["a#", "a/#/b", "a+/b", "#/a", "a/b+"] {
            assert_eq!(
                validate_filter(bad, 100),
                Err(TopicError::BadWildcard),
                "{bad}"
            );
        }
    }

    #[test]
    fn shared_subscriptions_parse() {
        let p = parse_subscription("$share/g1/a/+", 100).expect("valid");
        assert_eq!(
            p,
            ParsedFilter {
                group: Some("g1"),
                filter: "a/+"
            }
        );
        assert_eq!(
            parse_subscription("$share/g1", 100),
            Err(TopicError::BadShare)
        );
        assert_eq!(
            parse_subscription("$share//a", 100),
            Err(TopicError::BadShare)
        );
        assert_eq!(
            parse_subscription("$share/g+/a", 100),
            Err(TopicError::BadShare)
        );
        assert_eq!(parse_subscription("a/b", 100).expect("plain").group, None);
    }

    #[test]
    fn matching_follows_the_specification() {
        assert!(matches("a/+/c", "a/b/c"));
        assert!(!matches("a/+/c", "a/b/d"));
        assert!(matches("a/#", "a"));
        assert!(matches("a/#", "a/b/c"));
        assert!(matches("#", "a/b"));
        assert!(!matches("a/b", "a/b/c"));
        assert!(matches("+/+", "/x"));
        assert!(!matches("+", "a/b"));
        assert!(!matches("#", "$SYS/uptime"));
        assert!(!matches("+/uptime", "$SYS/uptime"));
        assert!(matches("$SYS/#", "$SYS/uptime"));
    }
}
