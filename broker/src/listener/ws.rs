//! WebSocket listener support (subprotocol `mqtt`).
