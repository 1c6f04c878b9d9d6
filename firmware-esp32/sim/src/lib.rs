//! Fleetwire device simulator: the firmware's `fleetwire-core` logic driven by tokio
//! against a real broker, over MQTT 3.1.1 in WebSocket binary frames.
//!
//! `main.rs` only parses the command line; everything else lives here so it can be
//! tested: [`session`] drives one device's core session engine over a
//! [`transport::Connector`], [`ws`] is the real WebSocket transport, [`auth`] the
//! API-key → JWT exchange, [`fleet`] runs many devices in one runtime,
//! [`ml`] one device asking for inference once.

pub mod log;

pub mod auth;
pub mod cli;
pub mod device;
pub mod download;
pub mod endpoint;
pub mod flash;
pub mod fleet;
pub mod handshake;
pub mod http;
pub mod ml;
pub mod ota;
pub mod session;
pub mod stats;
pub mod tls;
pub mod transport;
pub mod ws;

#[cfg(test)]
mod testkit;
