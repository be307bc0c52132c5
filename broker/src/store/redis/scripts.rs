//! The Lua scripts the store runs atomically in Redis, and how their invocations are built.

use super::keys::SessionKeys;
use super::RedisStore;
use crate::store::journal_hold::JournalReservation;
use redis::Script;

pub(super) struct Scripts {
    pub(super) attach: Script,
    pub(super) complete: Script,
    pub(super) detach: Script,
    pub(super) remove: Script,
    pub(super) enqueue: Script,
    pub(super) subscribe: Script,
    pub(super) adopt: Script,
    pub(super) take_expired: Script,
    pub(super) retain: Script,
    pub(super) tidy_retained: Script,
}

impl Scripts {
    /// Every script, the claim scripts with the journal helpers in front and the retained ones
    /// with the retained-index helpers.
    pub(super) fn new() -> Self {
        Scripts {
            attach: Script::new(concat!(
                include_str!("journal.lua"),
                include_str!("attach.lua")
            )),
            complete: Script::new(concat!(
                include_str!("journal.lua"),
                include_str!("complete.lua")
            )),
            detach: Script::new(include_str!("detach.lua")),
            remove: Script::new(include_str!("remove.lua")),
            enqueue: Script::new(include_str!("enqueue.lua")),
            subscribe: Script::new(include_str!("subscribe.lua")),
            adopt: Script::new(include_str!("adopt.lua")),
            take_expired: Script::new(include_str!("take_expired.lua")),
            retain: Script::new(concat!(
                include_str!("retained_index.lua"),
                include_str!("retain.lua")
            )),
            tidy_retained: Script::new(concat!(
                include_str!("retained_index.lua"),
                include_str!("tidy_retained.lua")
            )),
        }
    }
}

impl RedisStore {
    /// The invocation of a script whose keys are one session's plus the indexes.
    pub(super) fn session_invocation<'a>(
        &self,
        script: &'a Script,
        keys: &SessionKeys,
    ) -> redis::ScriptInvocation<'a> {
        let mut invocation = script.prepare_invoke();
        invocation
            .key(&keys.0[..])
            .key(self.sessions_key())
            .key(self.expiry_key())
            .key(self.node_sessions_key(&self.node_id));
        invocation
    }
}

/// Adds the optional journal key and arguments of `attach.lua` and `complete.lua`.
pub(super) fn journal_arguments(
    invocation: &mut redis::ScriptInvocation<'_>,
    journal: Option<&JournalReservation>,
) {
    if let Some(journal) = journal {
        invocation
            .key(journal.key())
            .arg(journal.field_prefix())
            .arg(journal.value_prefix());
    }
}
