//! Retained messages in Redis: one key per topic, expired by Redis itself when the message
//! carries an expiry, and indexes (`retained_index.lua`) holding the count and the payload bytes
//! the limits hold to.

use super::reply::{array, bytes, int, malformed};
use super::{codec, encode_failed, millis_since_epoch, RedisStore};
use crate::message::Message;
use crate::protocol::topic;
use crate::store::{Retained, StoreError};
use redis::Value;
use std::sync::Arc;
use std::time::SystemTime;

/// Keys fetched per MGET when collecting retained messages.
const MGET_BATCH: usize = 512;

/// Expired topics `retain.lua` drops from the counts at most, when it finds a limit reached.
const TIDY_BATCH: usize = 256;

impl RedisStore {
    pub(super) async fn set_retained(&self, message: Arc<Message>) -> Result<Retained, StoreError> {
        let encoded = if message.payload.is_empty() {
            Vec::new()
        } else {
            codec::encode_message(&message).map_err(encode_failed)?
        };
        // Redis drops the key itself when the message expires (at once if that is past).
        let expiry = message
            .expires_at
            .map_or(0, |at| millis_since_epoch(at).max(1));
        let mut invocation = self.scripts.retain.prepare_invoke();
        invocation
            .key(&self.retained_index_keys()[..])
            .key(self.retained_key(&message.topic))
            .arg(&*message.topic)
            .arg(encoded)
            .arg(expiry)
            .arg(self.retained_limits.max_messages)
            .arg(millis_since_epoch(SystemTime::now()))
            .arg(self.retained_prefix())
            .arg(TIDY_BATCH)
            .arg(message.payload.len())
            .arg(self.retained_limits.max_bytes);
        match int(self.run_script(invocation).await?)? {
            0 => Ok(Retained::CountFull),
            1 => Ok(Retained::Stored),
            2 => Ok(Retained::Deleted),
            3 => Ok(Retained::BytesFull),
            other => Err(malformed(&format!("retain.lua answered {other}"))),
        }
    }

    pub(super) async fn retained_matching(
        &self,
        filter: &str,
    ) -> Result<Vec<Arc<Message>>, StoreError> {
        let topics: Vec<String> = if filter.contains(['+', '#']) {
            let members = array(
                self.query(
                    redis::cmd("SMEMBERS")
                        .arg(self.retained_topics_key())
                        .to_owned(),
                )
                .await?,
            )?;
            let mut topics = Vec::new();
            for member in members {
                if let Ok(t) = String::from_utf8(bytes(member)?) {
                    if topic::matches(filter, &t) {
                        topics.push(t);
                    }
                }
            }
            topics
        } else {
            vec![filter.to_string()]
        };
        let now = SystemTime::now();
        let mut found = Vec::new();
        let mut vanished = Vec::new();
        for chunk in topics.chunks(MGET_BATCH) {
            let mut mget = redis::cmd("MGET");
            for t in chunk {
                mget.arg(self.retained_key(t));
            }
            let values = array(self.query(mget).await?)?;
            if values.len() != chunk.len() {
                return Err(malformed("MGET answered a different number of values"));
            }
            for (t, value) in chunk.iter().zip(values) {
                if value == Value::Nil {
                    // Expired by its TTL (or deleted meanwhile): tidy the index.
                    vanished.push(t.clone());
                    continue;
                }
                match codec::decode_message(&bytes(value)?) {
                    Ok(m) if m.is_expired(now) => {}
                    Ok(m) => found.push(Arc::new(m)),
                    Err(e) => tracing::warn!(topic = %t, error = %e, "retained message unreadable"),
                }
            }
        }
        if !vanished.is_empty() {
            let mut invocation = self.scripts.tidy_retained.prepare_invoke();
            invocation
                .key(&self.retained_index_keys()[..])
                .arg(self.retained_prefix())
                .arg(&vanished);
            if let Err(e) = self.run_script(invocation).await {
                tracing::debug!(error = %e, "retained index not tidied");
            }
        }
        Ok(found)
    }

    pub(super) async fn retained_count(&self) -> Result<usize, StoreError> {
        let n = int(self
            .query(
                redis::cmd("SCARD")
                    .arg(self.retained_topics_key())
                    .to_owned(),
            )
            .await?)?;
        Ok(usize::try_from(n).unwrap_or(0))
    }
}
