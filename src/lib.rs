//! webrtc-pbx-operator: turns a `WebRtcPbx` resource into a browser-reachable
//! Asterisk PBX and proves it works.
//!
//! Functional core, imperative shell: [`api`], [`validate`], [`policy`],
//! [`render`] and [`status`] are pure; the CLI and the controller do the I/O.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod allocate;
pub mod api;
pub mod certs;
pub mod cli;
pub mod client_config;
pub mod clients;
pub mod controller;
pub mod crd;
pub mod names;
pub mod policy;
pub mod ports;
pub mod probe;
pub mod render;
pub mod status;
pub mod telemetry;
pub mod validate;
