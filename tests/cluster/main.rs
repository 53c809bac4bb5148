//! The tests that share one control plane (kwok nodes, no real node):
//! admission, the chart, the controller in process, GitOps health checks,
//! the ground itself and hostile input. One binary, so one control plane
//! serves them all; each test works in a namespace of its own, and every
//! operator it starts watches only that namespace.
//!
//! Separate binaries, with control planes of their own: the fault and
//! restart tests (`faults.rs`, `restarts.rs`), the real-node end to end
//! (`e2e.rs`) and the one that needs cert-manager's CRD absent
//! (`without_cert_manager.rs`).

mod admission;
mod allocation;
mod chart;
mod controller;
mod gitops;
mod ground_smoke;
mod hostile;
