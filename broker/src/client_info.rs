//! What the broker keeps about connected clients for the admin API: what each told the
//! broker when it connected, and the state of an evacuation of the node (acted on in
//! [`crate::clients`]).

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// What a connection told the broker when it connected (fixed for its lifetime).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClientInfo {
    /// The user it logged in as, if any.
    pub username: Option<String>,
    /// Where it connects from.
    pub peer: SocketAddr,
    /// `3.1`, `3.1.1` or `5`.
    pub protocol: Cow<'static, str>,
    /// When it connected (ms since the Unix epoch).
    pub connected_at_ms: u64,
    /// The keep-alive in force, in seconds (0: none).
    pub keep_alive_secs: u16,
    /// How long its session outlives the connection, in seconds.
    pub session_expiry_secs: u32,
    /// Whether it asked for a clean start.
    pub clean_start: bool,
}

/// One connected client, as the admin API lists it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClientView {
    /// Its client id.
    pub client_id: String,
    /// The node it is connected to.
    pub node: String,
    /// Messages waiting in its mailbox for the connection to take.
    pub waiting: usize,
    /// Messages sent to it and not yet acknowledged.
    #[serde(default)]
    pub inflight: usize,
    /// Messages its session queues behind the in-flight window.
    #[serde(default)]
    pub queued: usize,
    /// Subscriptions its session holds.
    #[serde(default)]
    pub subscriptions: usize,
    /// What it told the broker when it connected.
    #[serde(flatten)]
    pub info: ClientInfo,
}

/// Milliseconds since the Unix epoch now.
pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Where an evacuation of this node stands.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct EvacuationStatus {
    /// Whether the node was told to evacuate (it then refuses new clients).
    pub evacuating: bool,
    /// Clients asked to leave so far.
    pub asked: usize,
    /// Clients still connected.
    pub remaining: usize,
    /// Clients asked per second.
    pub rate_per_sec: u32,
}

/// An evacuation in progress (or not).
#[derive(Default)]
pub struct Evacuation {
    pub(crate) evacuating: AtomicBool,
    pub(crate) status: Mutex<EvacuationStatus>,
}

impl Evacuation {
    /// Whether the node refuses new clients because it is being evacuated.
    pub fn is_evacuating(&self) -> bool {
        self.evacuating.load(Ordering::Relaxed)
    }
}
