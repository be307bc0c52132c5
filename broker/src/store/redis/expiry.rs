//! The expiry sweep: offline sessions whose expiry has passed, taken out of Redis in batches
//! (`take_expired.lua`).

use super::reply::{array, bytes, int, malformed, text};
use super::session_reply::decode_session;
use super::{millis_since_epoch, RedisStore};
use crate::message::ClientId;
use crate::store::{ExpiredSession, StoreError};
use redis::Value;
use std::time::SystemTime;

/// Sessions the expiry sweep takes per script run (keeps each run short).
const SWEEP_BATCH: usize = 256;

impl RedisStore {
    pub(super) async fn take_expired_sessions(
        &self,
        now: SystemTime,
    ) -> Result<Vec<ExpiredSession>, StoreError> {
        let now_ms = millis_since_epoch(now);
        let prefixes = self.key_prefixes();
        let mut expired = Vec::new();
        loop {
            let mut invocation = self.scripts.take_expired.prepare_invoke();
            invocation
                .key(self.sessions_key())
                .key(self.expiry_key())
                .arg(now_ms)
                .arg(SWEEP_BATCH)
                .arg(&prefixes[..])
                .arg(self.node_prefix());
            let [examined, taken]: [Value; 2] = array(self.run_script(invocation).await?)?
                .try_into()
                .map_err(|_| malformed("the sweep answers two values"))?;
            for entry in array(taken)? {
                let mut parts = array(entry)?.into_iter();
                let id = parts
                    .next()
                    .map(bytes)
                    .transpose()?
                    .ok_or_else(|| malformed("a swept session without a client id"))?;
                let id: ClientId = String::from_utf8_lossy(&id).into();
                let node = parts.next().map(text).transpose()?.unwrap_or_default();
                let session = decode_session(&id, parts.collect(), None)?;
                expired.push(ExpiredSession {
                    client_id: id,
                    parked_on: (!node.is_empty()).then_some(node),
                    session,
                });
            }
            if usize::try_from(int(examined)?).unwrap_or(0) < SWEEP_BATCH {
                return Ok(expired);
            }
        }
    }
}
