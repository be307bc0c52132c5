//! The Starling operator: turns `MqttCluster` resources into running Starling clusters.
//!
//! Every child object is built by a pure function of the cluster (see [`resources`]), so what
//! the operator applies is unit-tested without an API server; [`reconcile`] only applies them.

pub mod crd;
pub mod error;
#[cfg(test)]
mod example_files;
pub mod reconcile;
pub mod resources;
#[cfg(test)]
pub(crate) mod schema_check;
pub mod status;

pub use error::Error;
