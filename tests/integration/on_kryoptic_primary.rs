//! The e2e, engine and workflow suites again with the source (`primary`) token on Kryoptic (issue 14):
//! tokens of two makes in every flow, not one smoke test. `world::remade` reads the
//! test's thread name (libtest names it by the test's path) to choose the make. Not the
//! fault suite: its shim forwards to one module per process, SoftHSM's.

#[path = "e2e.rs"]
mod e2e;
#[path = "engine.rs"]
mod engine;
#[path = "workflow.rs"]
mod workflow;
