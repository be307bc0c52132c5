//! Accept loops for the client-facing listeners: TCP, TLS and WebSocket.

pub mod tls;
pub mod ws;
