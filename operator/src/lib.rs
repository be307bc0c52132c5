//! The Starling operator: turns `MqttCluster` resources into running Starling clusters.
//!
//! Every child object is built by a pure function of the cluster (see [`resources`]), so what
//! the operator applies is unit-tested without an API server; [`reconcile`] only applies them.

pub mod autoscale;
pub mod broker_admin;
pub mod crd;
pub mod error;
pub mod events;
#[cfg(test)]
mod example_files;
#[cfg(test)]
mod fake_api;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod reconcile;
pub mod redis_health;
pub mod resources;
#[cfg(test)]
pub(crate) mod schema_check;
pub mod status;

pub use error::Error;
