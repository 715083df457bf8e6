//! What happened to one job: the executor's result and the report's `status`, in one
//! place that both import (the executor never imports the report).

use serde::{Deserialize, Serialize};

/// The outcome of one job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// Done (or nothing to do).
    Ok,
    /// Tried and failed; see `error`.
    Failed,
    /// Not attempted (conflict, blocked, or destroy not allowed).
    Skipped,
    /// In a plan: not yet applied.
    Pending,
}

impl Status {
    /// Every status, in declaration order: what the report's schema lists.
    pub const ALL: [Status; 4] = [Status::Ok, Status::Failed, Status::Skipped, Status::Pending];
}

/// Per-job results of an apply, aligned with the diff's items.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// What happened.
    pub status: Status,
    /// Why it failed.
    pub error: Option<String>,
    /// Wall time.
    pub duration_ms: u64,
    /// The verified fingerprint of the copy.
    pub fingerprint: Option<String>,
    /// A note for a job that succeeded.
    pub note: Option<String>,
    /// How many times the job's PKCS#11 operations were tried (transient errors retried).
    pub attempts: u32,
}
