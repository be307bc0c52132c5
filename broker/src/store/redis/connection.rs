//! Reaching Redis: connecting the store, and every exchange bounded by the operation timeout.

use super::eviction;
use super::renewing::RenewingConnection;
use super::scripts::Scripts;
use super::{RedisStore, RedisStoreConfig, SCHEMA_VERSION};
use crate::store::StoreError;
use redis::aio::ConnectionManagerConfig;
use redis::{Cmd, RedisError, Value};
use std::future::Future;
use std::time::Duration;

fn unavailable(e: RedisError) -> StoreError {
    StoreError::Unavailable(format!("redis: {e}"))
}

impl RedisStore {
    /// Connects to Redis. Fails if Redis cannot be reached now ([`StoreError::Unavailable`]; see
    /// [`crate::store::connect_when_up`] to wait for it); once connected, the connection is
    /// re-established in the background whenever it breaks.
    pub async fn connect(config: RedisStoreConfig) -> Result<Self, StoreError> {
        let timeout = config.operation_timeout;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout.min(Duration::from_secs(2))))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let manager = tokio::time::timeout(
            timeout,
            RenewingConnection::connect(config.target.clone(), manager_config, "store"),
        )
        .await
        .map_err(|_| StoreError::Unavailable("redis: connect timed out".to_string()))?
        .map_err(unavailable)?;
        tracing::info!(
            node_id = %config.node_id,
            prefix = %config.key_prefix,
            "connected to the redis store"
        );
        eviction::warn_if_evicting(&mut manager.clone()).await;
        Ok(RedisStore {
            manager,
            scripts: Scripts::new(),
            base: format!("{}v{SCHEMA_VERSION}:", config.key_prefix),
            node_id: config.node_id,
            max_queued: config.max_queued,
            retained_limits: config.retained_limits,
            expiry_grace: config.expiry_grace,
            operation_timeout: config.operation_timeout,
        })
    }

    /// The node id recorded in the sessions this store attaches.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }
    /// Runs one Redis exchange within the operation timeout.
    pub(super) async fn bounded<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, RedisError>>,
    {
        match tokio::time::timeout(self.operation_timeout, work).await {
            Ok(result) => result.map_err(unavailable),
            Err(_) => Err(StoreError::Unavailable(format!(
                "redis: no answer within {:?}",
                self.operation_timeout
            ))),
        }
    }

    pub(super) async fn query(&self, cmd: Cmd) -> Result<Value, StoreError> {
        let mut con = self.manager.clone();
        self.bounded(async move { cmd.query_async::<Value>(&mut con).await })
            .await
    }

    pub(super) async fn run_script(
        &self,
        invocation: redis::ScriptInvocation<'_>,
    ) -> Result<Value, StoreError> {
        let mut con = self.manager.clone();
        self.bounded(async move { invocation.invoke_async::<Value>(&mut con).await })
            .await
    }
}
