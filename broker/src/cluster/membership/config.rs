//! How a gossiping node is configured: its addresses, seeds, key and protocol timings, and
//! reading the key from a file.

use super::MembershipError;
use memberlist::proto::SecretKey;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// Largest key file accepted; a base64 key of 32 bytes is 44 characters.
const KEY_FILE_MAX: u64 = 1024;
/// Timings of the gossip protocol. [`Default`] suits a LAN or a Kubernetes cluster network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GossipTuning {
    /// Time between failure-detection probes of one random member.
    pub probe_interval: Duration,
    /// How long a probe waits for the direct ack before asking other nodes to probe
    /// (should exceed the network's 99th-percentile round trip; less than `probe_interval`).
    pub probe_timeout: Duration,
    /// A suspected node is declared failed after `suspicion_mult × log10(n) × probe_interval`
    /// (at least `suspicion_mult × probe_interval`), sooner with confirmations from others.
    pub suspicion_mult: usize,
    /// Time between rounds of piggy-backed gossip to a few random members.
    pub gossip_interval: Duration,
    /// Time between full state exchanges with one random member over TCP. These also repair
    /// what gossip lost, such as a restarted node whose first announcement came too early.
    pub push_pull_interval: Duration,
    /// Timeout of a TCP exchange (joining, state sync, fallback probes).
    pub tcp_timeout: Duration,
    /// Longest pause between seed attempts while this node is alone.
    pub seed_retry_max: Duration,
}

impl Default for GossipTuning {
    fn default() -> Self {
        GossipTuning {
            probe_interval: Duration::from_secs(1),
            probe_timeout: Duration::from_millis(500),
            suspicion_mult: 4,
            gossip_interval: Duration::from_millis(200),
            push_pull_interval: Duration::from_secs(15),
            tcp_timeout: Duration::from_secs(10),
            seed_retry_max: Duration::from_secs(5),
        }
    }
}

/// Settings of a gossiping node.
#[derive(Debug, Clone)]
pub struct GossipConfig {
    /// This node's id, unique in the cluster (1 to 255 bytes).
    pub node_id: String,
    /// Address to bind, TCP and UDP on the same port; port 0 lets the system choose.
    pub bind: SocketAddr,
    /// Address other nodes dial; unset: `bind`, or when that is `0.0.0.0`/`::`, the host's
    /// first private address (startup fails when it has none).
    pub advertise: Option<SocketAddr>,
    /// Other nodes' gossip addresses as `host:port`, tried until one answers.
    pub seeds: Vec<String>,
    /// AES-GCM key (16, 24 or 32 bytes) shared by every node; `None` means no encryption, and
    /// such a node cannot talk to encrypted ones.
    pub secret_key: Option<Vec<u8>>,
    /// How long a node must have been dead before a node with the same id at another address is
    /// accepted in its place. Zero would refuse such a node for as long as the dead entry lasts.
    pub dead_node_reclaim: Duration,
    /// Protocol timings.
    pub tuning: GossipTuning,
    /// This node's run, published with its gossip: a node restarting under the same id is
    /// told apart from its earlier run by it, so that what is done about the earlier run's
    /// departure (adopting its sessions) never touches the new one. `None` publishes nothing.
    pub run: Option<u64>,
}

impl GossipConfig {
    /// Settings with the given id and bind address, no seeds, no encryption, a reclaim time of
    /// 3 s and default timings.
    pub fn new(node_id: impl Into<String>, bind: SocketAddr) -> Self {
        GossipConfig {
            node_id: node_id.into(),
            bind,
            advertise: None,
            seeds: Vec::new(),
            secret_key: None,
            dead_node_reclaim: Duration::from_secs(3),
            tuning: GossipTuning::default(),
            run: None,
        }
    }
}

/// Reads a gossip key file: base64 text (whitespace around it ignored) of 16, 24 or 32 bytes.
pub fn load_key_file(path: &Path) -> Result<Vec<u8>, MembershipError> {
    let fail = |reason: String| MembershipError::KeyFile {
        path: path.display().to_string(),
        reason,
    };
    let size = std::fs::metadata(path)
        .map_err(|e| fail(e.to_string()))?
        .len();
    if size > KEY_FILE_MAX {
        return Err(fail(format!("{size} bytes is far too long for a key")));
    }
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    let key: SecretKey = text
        .trim()
        .parse()
        .map_err(|e| fail(format!("not a base64 key of the right length ({e})")))?;
    Ok(key.to_vec())
}
