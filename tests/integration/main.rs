//! Integration tests: every one runs the real `hsm-sync` binary against real SoftHSM2
//! tokens in its own token directory (under /dev/shm where it exists).

mod e2e;
mod eddsa;
mod edges;
mod engine;
mod faults;
mod hostile;
mod interrupt;
mod lineage;
mod makes;
mod notify;
mod nss;
mod plan_lang;
mod reliability;
mod semantics;
mod state;
mod tooling;
mod verbose;
mod workflow;
mod world;

// The same suite files again, on other makes: loading them twice is the point.
#[allow(clippy::duplicate_mod)]
mod on_kryoptic_dr;
#[allow(clippy::duplicate_mod)]
mod on_kryoptic_primary;
// And on the other state backends (issue 15).
#[allow(clippy::duplicate_mod)]
mod on_file;
#[allow(clippy::duplicate_mod)]
mod on_postgres;
