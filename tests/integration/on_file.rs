//! The notify, reliability and interrupt suites again on the `file` state backend (issue
//! 15: every backend gives the same answers). `world::backend` reads the test's thread
//! name to choose the backend; each world's plans get `state: {backend: file}` with an
//! absolute directory, shared by every working directory the tests run from.

#[path = "interrupt.rs"]
mod interrupt;
#[path = "notify.rs"]
mod notify;
#[path = "reliability.rs"]
mod reliability;
