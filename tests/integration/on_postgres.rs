//! The notify, reliability and interrupt suites again on the `postgres` state backend
//! (issue 15), against a real PostgreSQL (`testkit::pg`: a throwaway cluster per test
//! process, or `$HSM_SYNC_TEST_PG_URL`). Each world has a database of its own; its plans
//! get `state: {backend: postgres, url_env: HSM_SYNC_STATE_URL}` and its runs the URL.

#[path = "interrupt.rs"]
mod interrupt;
#[path = "notify.rs"]
mod notify;
#[path = "reliability.rs"]
mod reliability;
