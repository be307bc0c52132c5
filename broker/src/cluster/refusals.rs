//! What the relay writer does when Redis refuses some commands of a batch.
//!
//! A batch is one pipeline, not a transaction: when Redis answers some commands with an error
//! (OOM once `maxmemory` is reached, READONLY from a replica after a failover, LOADING while it
//! loads its data), the others were applied. Sending the whole batch again would apply those
//! twice (a relayed message delivered twice), so only the refused commands are sent again, in
//! their order. Refusals that waiting can cure are retried until Redis takes them (the node says
//! it is degraded meanwhile); any other refusal (a command Redis will never take) is logged,
//! counted and dropped, as retrying it would stop the relay for good.

use redis::{Pipeline, ServerError};

/// Why Redis refused a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `OOM`: Redis reached `maxmemory` and evicts nothing (`noeviction`).
    OutOfMemory,
    /// `READONLY`: the connection reached a replica (after a failover, or a misconfigured URL).
    ReadOnly,
    /// `LOADING`, `BUSY`, `TRYAGAIN`, `MASTERDOWN`, `CLUSTERDOWN`: Redis will take it later.
    Busy,
    /// Anything else: retrying cannot help.
    Permanent,
}

impl Refusal {
    /// Classifies a Redis error code (the first word of its error reply).
    pub fn of(code: &str) -> Refusal {
        match code {
            "OOM" => Refusal::OutOfMemory,
            "READONLY" => Refusal::ReadOnly,
            "LOADING" | "BUSY" | "TRYAGAIN" | "MASTERDOWN" | "CLUSTERDOWN" => Refusal::Busy,
            _ => Refusal::Permanent,
        }
    }

    /// Whether the command is sent again.
    pub fn is_retried(self) -> bool {
        self != Refusal::Permanent
    }

    /// What `/readyz` says while Redis refuses writes this way.
    pub fn readiness(self) -> &'static str {
        match self {
            Refusal::OutOfMemory => {
                "redis refuses writes: out of memory (OOM; raise its maxmemory, or free memory)"
            }
            Refusal::ReadOnly => {
                "redis refuses writes: read-only replica (READONLY; point cluster.redis_url at the primary, or use cluster.redis_sentinel)"
            }
            Refusal::Busy => "redis refuses writes for now (loading, busy or failing over)",
            Refusal::Permanent => "redis refuses some writes (see the log)",
        }
    }

    /// The refusal reported when several differ: the one an operator must act on first.
    pub fn worse(self, other: Refusal) -> Refusal {
        let rank = |r: Refusal| match r {
            Refusal::ReadOnly => 3,
            Refusal::OutOfMemory => 2,
            Refusal::Busy => 1,
            Refusal::Permanent => 0,
        };
        if rank(other) > rank(self) {
            other
        } else {
            self
        }
    }
}

/// What to do after Redis refused some commands of a batch.
pub struct Refused {
    /// The refused commands that are sent again, in their order (empty: nothing to retry).
    pub retry: Pipeline,
    /// How many refused commands were dropped (refusals retrying cannot cure).
    pub dropped: usize,
    /// The refusal to report.
    pub worst: Refusal,
    /// The first refusal's message, for the log.
    pub example: String,
}

/// Splits the refused commands of `sent` (by their index in it) into those sent again and
/// those dropped.
pub fn sort_out(sent: &Pipeline, refused: &[(usize, ServerError)]) -> Refused {
    let mut retry = redis::pipe();
    let mut dropped = 0;
    let mut worst = Refusal::Permanent;
    let mut example = String::new();
    for (index, error) in refused {
        let refusal = Refusal::of(error.code());
        if example.is_empty() {
            example = format!("{}: {}", error.code(), error.details().unwrap_or(""));
        }
        worst = worst.worse(refusal);
        if !refusal.is_retried() {
            dropped += 1;
            continue;
        }
        if let Some(command) = sent.cmd_iter().nth(*index) {
            retry.add_command(command.clone()).ignore();
        }
    }
    Refused {
        retry,
        dropped,
        worst,
        example,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_that_waiting_cures_are_retried_others_dropped() {
        assert_eq!(Refusal::of("OOM"), Refusal::OutOfMemory);
        assert_eq!(Refusal::of("READONLY"), Refusal::ReadOnly);
        assert_eq!(Refusal::of("LOADING"), Refusal::Busy);
        assert_eq!(Refusal::of("WRONGTYPE"), Refusal::Permanent);
        assert!(Refusal::OutOfMemory.is_retried());
        assert!(!Refusal::Permanent.is_retried());
        assert_eq!(
            Refusal::Busy.worse(Refusal::ReadOnly),
            Refusal::ReadOnly,
            "a read-only Redis needs the operator first"
        );
        assert_eq!(
            Refusal::OutOfMemory.worse(Refusal::Busy),
            Refusal::OutOfMemory
        );
        assert!(Refusal::OutOfMemory.readiness().contains("OOM"));
    }
}
