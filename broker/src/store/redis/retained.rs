//! Retained messages in Redis: one key per topic with an index of topics, expired by Redis
//! itself when the message carries an expiry.

use super::reply::{array, bytes, int, malformed};
use super::{codec, encode_failed, millis_since_epoch, RedisStore};
use crate::message::Message;
use crate::protocol::topic;
use crate::store::StoreError;
use redis::Value;
use std::sync::Arc;
use std::time::SystemTime;

/// Keys fetched per MGET when collecting retained messages.
const MGET_BATCH: usize = 512;

impl RedisStore {
    pub(super) async fn set_retained(&self, message: Arc<Message>) -> Result<(), StoreError> {
        let key = self.retained_key(&message.topic);
        let index = self.retained_topics_key();
        let mut pipe = redis::pipe();
        pipe.atomic();
        if message.payload.is_empty() {
            pipe.del(&key).ignore();
            pipe.srem(&index, &*message.topic).ignore();
        } else {
            let encoded = codec::encode_message(&message).map_err(encode_failed)?;
            let mut set = redis::cmd("SET");
            set.arg(&key).arg(encoded);
            if let Some(at) = message.expires_at {
                // Redis drops the key itself when the message expires (at once if that is past).
                set.arg("PXAT").arg(millis_since_epoch(at).max(1));
            }
            pipe.add_command(set).ignore();
            pipe.sadd(&index, &*message.topic).ignore();
        }
        self.query_pipeline(pipe).await.map(|_| ())
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
            let mut srem = redis::cmd("SREM");
            srem.arg(self.retained_topics_key()).arg(&vanished);
            if let Err(e) = self.query(srem).await {
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
