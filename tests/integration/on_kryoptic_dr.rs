//! The e2e, engine, workflow and fault suites again with the target (`dr`) token on Kryoptic (issue 14):
//! tokens of two makes in every flow, not one smoke test. `world::remade` reads the
//! test's thread name (libtest names it by the test's path) to choose the make. The fault
//! suite puts the token it watches behind the shim, which forwards to that token's make.

#[path = "e2e.rs"]
mod e2e;
#[path = "engine.rs"]
mod engine;
#[path = "faults.rs"]
mod faults;
#[path = "workflow.rs"]
mod workflow;
