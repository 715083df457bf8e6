//! Test and benchmark helpers for hsm-sync, never shipped: SoftHSM token provisioning
//! ([`provision`]), the `hsm-fixture` binary that runs it in a process of its own
//! (SoftHSM reads one `SOFTHSM2_CONF` per process, so each test's tokens need their own),
//! and on-demand builds of the workspace's test programs ([`build`]).
//!
//! The integration tests and the benchmarks of the `hsm-sync` package use it as a
//! dev-dependency; it may use anything, cryptoki included.

#![warn(missing_docs)]

pub mod build;
pub mod pg;
pub mod provision;
