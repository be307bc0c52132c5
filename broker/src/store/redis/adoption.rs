//! Taking over a departed node's sessions (`adopt.lua`): its wills and subscriptions come back to
//! the adopting node, which stashes its adoption until it has the answer.

use super::reply::{array, int, malformed, text};
use super::session_reply::{decode_stored_will, decode_subscriptions};
use super::{millis_since_epoch, RedisStore};
use crate::message::ClientId;
use crate::store::{AdoptedSession, Adoption, StoreError};
use redis::Value;
use std::time::SystemTime;

impl RedisStore {
    pub(super) async fn adopt_sessions(
        &self,
        departed: &str,
        run: Option<u64>,
    ) -> Result<Adoption, StoreError> {
        let grace_ms = u64::try_from(self.expiry_grace.as_millis()).unwrap_or(u64::MAX);
        let mut invocation = self.scripts.adopt.prepare_invoke();
        invocation
            .key(self.node_sessions_key(departed))
            .key(self.node_sessions_key(&self.node_id))
            .key(self.sessions_key())
            .key(self.expiry_key())
            .key(self.node_moved_key(departed))
            .key(self.adoption_stash_key(departed))
            .key(self.node_run_key(departed))
            .key(self.node_returned_key(departed))
            .arg(departed)
            .arg(&self.node_id)
            .arg(millis_since_epoch(SystemTime::now()))
            .arg(grace_ms)
            .arg(&self.key_prefixes()[..])
            .arg(run.map(|r| r.to_string()).unwrap_or_default());
        let [returned, entries]: [Value; 2] = array(self.run_script(invocation).await?)?
            .try_into()
            .map_err(|_| malformed("an adoption answers a flag and a list"))?;
        let mut adopted = Vec::new();
        for entry in array(entries)? {
            let [id, will, subs, was_online, _ended, moved]: [Value; 6] = array(entry)?
                .try_into()
                .map_err(|_| malformed("an adopted session has six parts"))?;
            let client_id: ClientId = text(id)?.into();
            adopted.push(AdoptedSession {
                will: decode_stored_will(&client_id, will)?,
                subscriptions: decode_subscriptions(&client_id, subs)?,
                was_online: int(was_online)? == 1,
                moved: int(moved)? == 1,
                client_id,
            });
        }
        // The answer arrived: the stash is no longer needed (should this fail, it expires).
        let mut con = self.manager.clone();
        let stash = self.adoption_stash_key(departed);
        if let Err(e) = self
            .bounded(async move {
                redis::cmd("DEL")
                    .arg(stash)
                    .query_async::<()>(&mut con)
                    .await
            })
            .await
        {
            tracing::debug!(error = %e, "adoption stash not deleted");
        }
        Ok(Adoption {
            sessions: adopted,
            node_returned: int(returned)? == 1,
        })
    }
}
