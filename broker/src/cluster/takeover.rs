//! Taking a session over, wherever it is held: the claim in the store, then the cluster's part.
//! A node that had the session parked (no connection) is told to forget it; a node whose
//! connection holds it is asked to release it, and the claim completes once that connection has
//! stored the session (or fails when a newer claim won meanwhile).

use super::relay::ClusterLink;
use crate::message::ClientId;
use crate::store::{Completed, Holder, SessionClaim, Store, StoredSession};

/// A session claimed for this node.
#[derive(Debug)]
pub struct Claimed {
    /// The claim's generation: a later claim anywhere supersedes it.
    pub generation: u64,
    /// The session as stored before the claim, if there was one.
    pub previous: Option<StoredSession>,
    /// The node the session came from, if another node had it.
    pub moved_from: Option<String>,
}

/// Claims `client_id`'s session for this node in `store`; `link` is this node's cluster link
/// (none when standalone). `None` if the store failed or a newer claim won.
pub async fn claim_session(
    store: &dyn Store,
    link: Option<&ClusterLink>,
    client_id: &ClientId,
    claim: &SessionClaim,
) -> Option<Claimed> {
    let attached = match store.attach_session(client_id, claim).await {
        Ok(attached) => attached,
        Err(e) => {
            tracing::warn!(client_id = %client_id, error = %e, "session store unavailable");
            return None;
        }
    };
    match attached.holder {
        Holder::Free { parked_on } => {
            let moved_from = parked_on.clone();
            if let (Some(node), Some(link)) = (parked_on, link) {
                let filters = attached
                    .previous
                    .iter()
                    .flat_map(|s| s.subscriptions.iter().map(|s| s.filter.clone()))
                    .collect();
                link.forget_parked(&node, client_id, filters, true);
            }
            Some(Claimed {
                generation: attached.generation,
                previous: attached.previous,
                moved_from,
            })
        }
        Holder::Elsewhere(node) => {
            if let Some(link) = link {
                link.request_release(&node, client_id, attached.generation)
                    .await;
            }
            match store
                .complete_attach(client_id, attached.generation, claim.journal.as_ref())
                .await
            {
                Ok(Completed::Taken(session)) => Some(Claimed {
                    generation: attached.generation,
                    previous: session,
                    moved_from: Some(node),
                }),
                Ok(Completed::Superseded) => {
                    tracing::debug!(client_id = %client_id, "a newer connection claimed the session first");
                    None
                }
                Err(e) => {
                    tracing::warn!(client_id = %client_id, error = %e, "session store unavailable");
                    None
                }
            }
        }
    }
}
