//! The Redis store warns when the Redis it connects to may evict its keys: against real
//! `redis-server`s with an evicting policy, with the default `noeviction`, and with `CONFIG`
//! disabled (as managed Redis services often have it), which is tolerated.

mod common_redis;

use common_redis::RedisServer;
use starling_broker::store::redis::eviction::{self, Eviction, EvictionCheckError};
use starling_broker::store::{RedisStore, RedisStoreConfig};
use std::io;
use std::sync::{Arc, Mutex};

/// What the broker logs while `connect` runs, at debug level and above, as plain text.
async fn logs_of_connect(server: &RedisServer) -> String {
    let buffer = Arc::new(Mutex::new(Vec::new()));
    let writer = {
        let buffer = buffer.clone();
        move || Captured(buffer.clone())
    };
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(writer)
        .finish();
    {
        // The test runtime runs on this thread only: the default subscriber sees everything.
        let _guard = tracing::subscriber::set_default(subscriber);
        RedisStore::connect(RedisStoreConfig::new(server.target(), "node-a", 100))
            .await
            .expect("the store connects whatever the eviction settings");
    }
    let bytes = buffer.lock().expect("log buffer").clone();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// A log writer appending to a shared buffer.
struct Captured(Arc<Mutex<Vec<u8>>>);

impl io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The lines of `logs` at `level` that mention the eviction settings.
fn eviction_lines<'a>(logs: &'a str, level: &str) -> Vec<&'a str> {
    logs.lines()
        .filter(|l| l.contains(level) && l.contains("maxmemory"))
        .collect()
}

#[tokio::test]
async fn an_evicting_redis_is_reported_and_warned_about_once() {
    let server =
        RedisServer::start_with_args(&["--maxmemory", "10mb", "--maxmemory-policy", "allkeys-lru"])
            .await;
    let mut con = server.client().await;
    assert_eq!(
        eviction::check(&mut con).await.expect("CONFIG GET answers"),
        Eviction::Possible {
            policy: "allkeys-lru".to_string(),
            maxmemory: 10 * 1024 * 1024,
        }
    );

    let logs = logs_of_connect(&server).await;
    let warnings = eviction_lines(&logs, "WARN");
    assert_eq!(warnings.len(), 1, "one warning, got:\n{logs}");
    assert!(
        warnings[0].contains("maxmemory-policy allkeys-lru")
            && warnings[0].contains("maxmemory-policy noeviction"),
        "the warning names the setting and the fix: {}",
        warnings[0]
    );
}

#[tokio::test]
async fn a_redis_that_never_evicts_is_not_warned_about() {
    // redis-server's default policy, with a limit: full means refused writes, not lost keys.
    let server = RedisServer::start_with_args(&["--maxmemory", "10mb"]).await;
    let mut con = server.client().await;
    assert_eq!(
        eviction::check(&mut con).await.expect("CONFIG GET answers"),
        Eviction::Never
    );
    let logs = logs_of_connect(&server).await;
    assert!(eviction_lines(&logs, "WARN").is_empty(), "{logs}");
}

#[tokio::test]
async fn a_redis_that_refuses_config_is_tolerated_and_noted_at_debug_level() {
    let server = RedisServer::start_with_args(&["--rename-command", "CONFIG", ""]).await;
    let mut con = server.client().await;
    assert!(matches!(
        eviction::check(&mut con).await,
        Err(EvictionCheckError::Config(_))
    ));

    let logs = logs_of_connect(&server).await;
    assert!(eviction_lines(&logs, "WARN").is_empty(), "{logs}");
    assert!(
        logs.lines()
            .any(|l| l.contains("DEBUG") && l.contains("cannot read redis' eviction settings")),
        "{logs}"
    );
}
