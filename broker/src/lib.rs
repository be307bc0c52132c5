//! Starling broker: a complete MQTT 3.1.1 and 5.0 broker node.
//!
//! Data flows one way: socket ([`listener`]) → [`connection`] → [`broker`] (routing over the
//! [`router`]'s subscription tree; retained and offline messages in the [`store`]) → each
//! subscriber's [`mailbox`] → its connection ([`session`] keeps the delivery state) → socket.
//! Subscribers on other nodes are reached through the [`cluster`] relay: the relay writer
//! appends to the other node's inbox stream in Redis, whose reader delivers there. [`server`]
//! wires listeners, the admin endpoint and shutdown together.

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
