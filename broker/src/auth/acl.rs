//! The ACL file and MQTT filter matching (format: see the module doc of `auth`).

use super::{content_lines, At, AuthError};
use std::collections::HashMap;
use std::path::Path;

/// One `topic` or `pattern` line.
#[derive(Debug)]
struct Rule {
    read: bool,
    write: bool,
    filter: String,
}

/// Parsed ACL: global rules, per-user rules and `%c`/`%u` patterns.
#[derive(Debug, Default)]
pub(super) struct Acl {
    global: Vec<Rule>,
    users: HashMap<String, Vec<Rule>>,
    patterns: Vec<Rule>,
}

impl Acl {
    pub(super) fn parse(path: &Path, text: &str) -> Result<Acl, AuthError> {
        let mut acl = Acl::default();
        let mut current_user: Option<String> = None;
        for (at, line) in content_lines(path, text) {
            match split_word(line) {
                ("user", "") => return Err(at.err("`user` without a name", "write `user <name>`")),
                ("user", name) => current_user = Some(name.to_string()),
                (keyword @ ("topic" | "pattern"), rest) => {
                    let rule = parse_rule(&at, keyword, rest)?;
                    match (keyword, &current_user) {
                        ("pattern", _) => acl.patterns.push(rule),
                        (_, None) => acl.global.push(rule),
                        (_, Some(user)) => acl.users.entry(user.clone()).or_default().push(rule),
                    }
                }
                (other, _) => {
                    let fix =
                        "start each line with `user`, `topic` or `pattern`, or `#` for a comment";
                    return Err(at.err(format!("unknown keyword `{other}`"), fix));
                }
            }
        }
        Ok(acl)
    }

    /// Does a rule that applies to this client grant write (else read)
    /// access with a filter that covers `requested`?
    pub(super) fn allows(
        &self,
        id: &str,
        user: Option<&str>,
        write: bool,
        requested: &str,
    ) -> bool {
        let grants = |rule: &&Rule| if write { rule.write } else { rule.read };
        let user_rules = user.and_then(|u| self.users.get(u)).into_iter().flatten();
        let mut fixed = self.global.iter().chain(user_rules).filter(grants);
        let mut patterns = self.patterns.iter().filter(grants);
        fixed.any(|rule| covers(&rule.filter, requested))
            || patterns.any(|rule| {
                substitute(&rule.filter, id, user).is_some_and(|f| covers(&f, requested))
            })
    }
}

/// Splits off the first whitespace-separated word; the rest is trimmed.
fn split_word(text: &str) -> (&str, &str) {
    text.split_once(char::is_whitespace)
        .map_or((text, ""), |(word, rest)| (word, rest.trim()))
}

fn parse_rule(at: &At<'_>, keyword: &str, rest: &str) -> Result<Rule, AuthError> {
    let (word, tail) = split_word(rest);
    let ((read, write), filter) = match word {
        "read" => ((true, false), tail),
        "write" => ((false, true), tail),
        "readwrite" => ((true, true), tail),
        _ => ((true, true), rest),
    };
    if filter.is_empty() {
        let fix = format!("write `{keyword} [read|write|readwrite] <filter>`");
        return Err(at.err(format!("`{keyword}` without a topic filter"), fix));
    }
    let levels: Vec<&str> = filter.split('/').collect();
    let last = levels.len() - 1;
    let bad = levels.iter().enumerate().any(|(i, level)| {
        (level.contains('#') && (*level != "#" || i != last))
            || (level.contains('+') && *level != "+")
    });
    if bad || filter.contains('\0') {
        let fix =
            "use `+` only as a whole level and `#` only as the whole last level, e.g. `a/+/c`";
        return Err(at.err(format!("invalid topic filter `{filter}`"), fix));
    }
    let filter = filter.to_string();
    Ok(Rule {
        read,
        write,
        filter,
    })
}

/// Replaces `%c` and `%u` in a pattern; `None` when the pattern does not apply
/// (`%u` for an anonymous client, or a value that could widen the filter).
fn substitute(pattern: &str, client_id: &str, username: Option<&str>) -> Option<String> {
    fn safe(value: &str) -> Option<&str> {
        let widens = value.starts_with('$') || value.contains(['+', '#', '/', '\0']);
        (!value.is_empty() && !widens).then_some(value)
    }
    let mut out = String::with_capacity(pattern.len());
    let mut rest = pattern;
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..at]);
        rest = &rest[at + 1..];
        if let Some(tail) = rest.strip_prefix('c') {
            out.push_str(safe(client_id)?);
            rest = tail;
        } else if let Some(tail) = rest.strip_prefix('u') {
            out.push_str(safe(username?)?);
            rest = tail;
        } else {
            out.push('%');
        }
    }
    out.push_str(rest);
    Some(out)
}

/// Does the filter `rule` match every topic that `requested` can match? For a
/// `requested` topic name (no wildcards) this is plain MQTT topic matching.
fn covers(rule: &str, requested: &str) -> bool {
    if requested.starts_with('$') && rule.starts_with(['+', '#']) {
        return false;
    }
    let (mut r, mut q) = (rule.split('/'), requested.split('/'));
    loop {
        match (r.next(), q.next()) {
            (Some("#"), _) => return true,
            (Some(_), Some("#")) => return false,
            (Some(rl), Some(ql)) if rl == "+" || rl == ql => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}
