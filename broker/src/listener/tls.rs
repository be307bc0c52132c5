//! TLS listener support (rustls, PEM files).
