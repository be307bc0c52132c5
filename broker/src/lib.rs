//! Starling broker: a complete MQTT 3.1.1 and 5.0 broker node.
//!
//! Data flows one way: socket → [`connection`] → [`session`] → [`broker`] (routing over the
//! [`router`]'s subscription tree) → ([`store`]) → sessions → sockets. [`server`] wires
//! listeners, the admin endpoint and shutdown together.

pub mod admin;
pub mod auth;
pub mod broker;
pub mod client_info;
pub mod clients;
pub mod cluster;
pub mod connection;
pub mod ctl;
pub mod listener;
pub mod mailbox;
pub mod message;
pub mod metrics;
pub mod protocol;
pub mod read_mostly;
pub mod reload;
pub mod retained_limits;
pub mod router;
pub mod server;
pub mod session;
pub mod store;
pub mod sys;
