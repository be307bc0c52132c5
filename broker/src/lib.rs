//! Starling broker: a complete MQTT 3.1.1 and 5.0 broker node.
//!
//! Data flows one way: socket → [`connection`] → [`session`] → [`router`] →
//! ([`store`]) → sessions → sockets.

pub mod auth;
pub mod listener;
