//! Flow control of the writer: how far behind each target node's inbox reader is, and waiting
//! (for a bounded time) for readers that fall too far behind.

use super::super::ClusterLink;
use super::packs::INBOX_MAX_LEN;
use crate::cluster::unread::{parse_stream_id, Unread};
use crate::router::remote::NodeId;
use crate::store::redis::renewing::RenewingConnection;
use std::collections::HashSet;
use std::time::Duration;

/// Messages this node may have in a node's inbox that its reader has not reported read before
/// the writer waits (and the relay queue pushes back on publishers). Well below
/// [`INBOX_MAX_LEN`], so trimming does not drop unread messages of a few busy origins.
pub(super) const RELAY_WINDOW: usize = INBOX_MAX_LEN / 4;
/// How long the writer waits for a reader that does not move before it stops waiting for it.
pub(super) const WINDOW_WAIT: Duration = Duration::from_secs(1);
/// How often the writer asks for the progress of a reader it waits for.
pub(super) const WINDOW_POLL: Duration = Duration::from_millis(2);

/// Flow control of the writer: how far behind each node's reader is (see [`crate::cluster::unread`]).
#[derive(Default)]
pub(super) struct Flow {
    pub(super) unread: Unread,
    /// Nodes whose reader did not move within [`WINDOW_WAIT`]: not waited for again until it does.
    pub(super) stalled: HashSet<NodeId>,
}

impl Flow {
    /// Applies a reader's progress report (the value of its `:read` key).
    pub(super) fn progress(&mut self, node: &NodeId, report: Option<Vec<u8>>) {
        let Some(read) = report.as_deref().and_then(parse_stream_id) else {
            return;
        };
        let before = self.unread.messages(node);
        self.unread.read_up_to(node, read);
        if self.unread.messages(node) < before {
            self.stalled.remove(node);
        }
    }

    /// Waits until the readers of the nodes in `targets` are less than [`RELAY_WINDOW`] messages
    /// behind, polling their progress; a reader that does not move within [`WINDOW_WAIT`] (its
    /// node is likely gone) is not waited for until it moves again.
    pub(super) async fn wait_for_readers(
        &mut self,
        link: &ClusterLink,
        con: &mut RenewingConnection,
        targets: &[NodeId],
    ) {
        for node in targets {
            let started = tokio::time::Instant::now();
            while self.unread.messages(node) >= RELAY_WINDOW && !self.stalled.contains(node) {
                if started.elapsed() >= WINDOW_WAIT {
                    tracing::warn!(node = %node, "relay: the node's inbox reader does not move; not waiting for it");
                    self.stalled.insert(node.clone());
                    break;
                }
                tokio::time::sleep(WINDOW_POLL).await;
                // Bounded by what is left of the wait: on a connection left hanging (a Redis
                // replaced behind the same address) the read would otherwise wait the writer's
                // whole reply wait. A read is safe to give up, and the connection is replaced.
                let left = WINDOW_WAIT
                    .saturating_sub(started.elapsed())
                    .max(WINDOW_POLL);
                let report = tokio::time::timeout(
                    left,
                    redis::cmd("GET")
                        .arg(link.keys.inbox_read(node))
                        .query_async::<Option<Vec<u8>>>(&mut *con),
                )
                .await;
                match report {
                    Ok(Ok(report)) => self.progress(node, report),
                    Ok(Err(_)) => {}
                    Err(_) => con.renew(),
                }
            }
        }
    }
}
