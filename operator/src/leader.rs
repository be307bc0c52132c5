//! Leader election over a `coordination.k8s.io/v1` Lease, so only one replica runs the
//! controller. The lease protocol (acquire, renew, take over an expired lease, with
//! server-side apply detecting conflicts) is `kube-lease-manager`'s; this module decides what
//! the operator does with it: wait as a standby, then hold the lease and step down when it is
//! lost or cannot be renewed in time.

use kube::Client;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder, LeaseManagerError};
use std::time::{Duration, Instant};

/// How long a lease stays valid after its last renewal.
pub const LEASE_DURATION_SECONDS: u64 = 15;
/// The holder renews this long before the lease expires (also the clock skew tolerated).
pub const LEASE_GRACE_SECONDS: u64 = 5;
/// Pause between attempts after an API error.
const RETRY: Duration = Duration::from_secs(2);
/// How long the leader keeps trying to renew before it steps down: the lease it last renewed
/// expires `LEASE_GRACE_SECONDS` after the first failed renewal, so stop a little earlier.
const STEP_DOWN_AFTER: Duration = Duration::from_secs(LEASE_GRACE_SECONDS - 2);

/// Why leader election cannot start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// Leader election is on but no namespace for the Lease was given.
    #[error(
        "--leader-election needs --lease-namespace (or the POD_NAMESPACE environment variable)"
    )]
    MissingNamespace,
    /// Neither `POD_NAME` nor the hostname names this replica.
    #[error("no identity for the lease: POD_NAME is unset and the hostname is unreadable")]
    NoIdentity,
    /// The Lease API failed.
    #[error("lease: {0}")]
    Lease(#[from] LeaseManagerError),
}

/// Which Lease, and who this replica is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseConfig {
    /// The Lease's name.
    pub name: String,
    /// The Lease's namespace.
    pub namespace: String,
    /// This replica's holder identity: the pod name, else the hostname.
    pub identity: String,
}

impl LeaseConfig {
    /// Checks the options: the namespace is required, the identity is the pod name or else
    /// the hostname.
    pub fn new(
        name: String,
        namespace: Option<String>,
        pod_name: Option<String>,
        hostname: Option<String>,
    ) -> Result<Self, LeaderError> {
        let namespace = namespace
            .filter(|ns| !ns.is_empty())
            .ok_or(LeaderError::MissingNamespace)?;
        let identity = pod_name
            .filter(|n| !n.is_empty())
            .or(hostname.filter(|n| !n.is_empty()))
            .ok_or(LeaderError::NoIdentity)?;
        Ok(LeaseConfig {
            name,
            namespace,
            identity,
        })
    }
}

/// This host's name, if readable.
pub fn hostname() -> Option<String> {
    hostname::get().ok()?.into_string().ok()
}

/// What to do after renewing the lease failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenewDecision {
    /// The lease may still be ours: try again.
    Retry,
    /// The lease may have expired and another replica may lead: stop.
    StepDown,
}

/// Renewals have failed since `failing_since`: keep trying while the lease we last renewed is
/// surely still valid (it is renewed `LEASE_GRACE_SECONDS` before it expires), step down
/// before it may expire.
pub fn after_renew_error(failing_since: Instant, now: Instant) -> RenewDecision {
    if now.saturating_duration_since(failing_since) >= STEP_DOWN_AFTER {
        RenewDecision::StepDown
    } else {
        RenewDecision::Retry
    }
}

/// One replica's part in the election.
pub struct Elector {
    manager: LeaseManager,
    identity: String,
}

impl Elector {
    /// Prepares the election, creating the Lease if it does not exist.
    pub async fn new(client: Client, config: &LeaseConfig) -> Result<Self, LeaderError> {
        let manager = LeaseManagerBuilder::new(client, &config.name)
            .with_namespace(&config.namespace)
            .with_identity(&config.identity)
            .with_duration(LEASE_DURATION_SECONDS)
            .with_grace(LEASE_GRACE_SECONDS)
            .build()
            .await?;
        Ok(Elector {
            manager,
            identity: config.identity.clone(),
        })
    }

    /// Waits (as a standby) until this replica holds the lease. API errors are logged and
    /// retried: a standby has nothing to lose by waiting.
    pub async fn acquire(&self) {
        loop {
            match self.manager.changed().await {
                Ok(true) => {
                    tracing::info!(identity = %self.identity, "acquired the lease: leading");
                    return;
                }
                Ok(false) => {}
                Err(error) => {
                    tracing::warn!(%error, "cannot acquire the lease; retrying");
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
    }

    /// Renews the lease while this replica leads; returns why leadership ended: the lease
    /// went to another replica, or it could not be renewed before it may have expired.
    pub async fn hold(&self) -> String {
        let mut failing_since = None;
        loop {
            match self.manager.changed().await {
                Ok(false) => return "the lease went to another replica".to_string(),
                Ok(true) => failing_since = None,
                Err(error) => {
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    match after_renew_error(since, Instant::now()) {
                        RenewDecision::StepDown => {
                            return format!("cannot renew the lease: {error}");
                        }
                        RenewDecision::Retry => {
                            tracing::warn!(%error, "cannot renew the lease; retrying");
                            tokio::time::sleep(RETRY).await;
                        }
                    }
                }
            }
        }
    }

    /// Gives the lease up (on shutdown), so a standby takes over at once.
    pub async fn release(&self) {
        if let Err(error) = self.manager.release().await {
            tracing::warn!(%error, "cannot release the lease");
        }
    }
}

#[cfg(test)]
mod tests;
