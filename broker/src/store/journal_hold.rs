//! What ties a copy of a message to its entry in the node's delivery journal (cluster mode; see
//! `cluster::journal`): a hold that deletes the entry when the last clone of the copy is dropped,
//! and the reservation through which a session claim's script journals the copies it takes.
//!
//! The store only carries these; the deletion goes through [`JournalRelease`], which the
//! cluster implements, so the store knows nothing of the cluster.

use crate::protocol::QoS;
use crate::store::QueuedMessage;
use std::fmt;
use std::sync::{Arc, Weak};

/// Deletes journal entries (the cluster's relay writer does, in order with its other writes).
pub trait JournalRelease: Send + Sync {
    /// Deletes journal field `field`: its copy is done with.
    fn release_journal(&self, field: String);
}

/// Keeps a copy's journal field while the copy lives in this node's memory.
#[derive(Clone)]
pub struct JournalHold(Arc<Held>);

struct Held {
    field: String,
    owner: Weak<dyn JournalRelease>,
}

impl JournalHold {
    /// A hold on `field`, deleted through `owner` when the last clone is dropped.
    pub fn new(field: String, owner: Weak<dyn JournalRelease>) -> Self {
        JournalHold(Arc::new(Held { field, owner }))
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(owner) = self.owner.upgrade() {
            owner.release_journal(std::mem::take(&mut self.field));
        }
    }
}

impl fmt::Debug for JournalHold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JournalHold({})", self.0.field)
    }
}

/// Holds do not distinguish copies: two copies of the same message are equal whichever holds.
impl PartialEq for JournalHold {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for JournalHold {}

/// The fields reserved for the copies one claim moves out of the store, which the claim's script
/// journals: copy `index` of the claim (its in-flight messages first, then its queue) is field
/// `<field_prefix><index>`, its value `<value_prefix>` and the copy in the queued encoding.
#[derive(Clone)]
pub struct JournalReservation {
    key: String,
    field_prefix: String,
    value_prefix: Vec<u8>,
    owner: Weak<dyn JournalRelease>,
}

impl fmt::Debug for JournalReservation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JournalReservation")
            .field("key", &self.key)
            .field("field_prefix", &self.field_prefix)
            .finish_non_exhaustive()
    }
}

impl JournalReservation {
    /// Fields `<field_prefix><index>` of hash `key`, deleted through `owner`.
    pub fn new(
        key: String,
        field_prefix: String,
        value_prefix: Vec<u8>,
        owner: Weak<dyn JournalRelease>,
    ) -> Self {
        JournalReservation {
            key,
            field_prefix,
            value_prefix,
            owner,
        }
    }

    /// The journal hash the script writes to.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// What each field starts with; the copy's index follows.
    pub fn field_prefix(&self) -> &str {
        &self.field_prefix
    }

    /// What each value starts with; the copy in the queued encoding follows.
    pub fn value_prefix(&self) -> &[u8] {
        &self.value_prefix
    }

    /// Takes charge of copy `index`, which the script journalled: a QoS 1/2 copy keeps its field
    /// while it lives; a QoS 0 copy has no business in the journal, so its field goes at once.
    pub fn attach(&self, index: usize, queued: &mut QueuedMessage) {
        if queued.qos == QoS::AtMostOnce {
            self.release(index);
        } else {
            queued.journal = Some(JournalHold::new(self.field(index), self.owner.clone()));
        }
    }

    /// Deletes the field of copy `index` (it could not be read back, so it is dropped).
    pub fn release(&self, index: usize) {
        if let Some(owner) = self.owner.upgrade() {
            owner.release_journal(self.field(index));
        }
    }

    fn field(&self, index: usize) -> String {
        format!("{}{index}", self.field_prefix)
    }
}
