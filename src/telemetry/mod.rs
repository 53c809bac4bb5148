//! Telemetry of the running operator: the metrics ([`metrics`]) and the
//! HTTP endpoint that serves them with the health checks ([`server`]).

pub mod metrics;
pub mod server;

pub use metrics::Metrics;
pub use server::{CONNECTION_DEADLINE, MAX_CONNECTIONS, serve};
