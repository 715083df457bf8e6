//! The machine-readable report (CONTRACT.md §4): `apply --report FILE` and
//! `plan --format json` share this shape. It carries no PIN and no key material, and is
//! written atomically (complete or absent).

use std::io::Write;
use std::path::Path;
use std::time::SystemTime;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::diff::{Action, Diff};
use crate::key::KeyRef;

/// The outcome of one job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
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

/// Counts per action, plus failed jobs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct Summary {
    pub create: usize,
    pub update: usize,
    pub delete: usize,
    pub unchanged: usize,
    pub conflict: usize,
    pub blocked: usize,
    pub failed: usize,
}

/// One job: one key on one target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobRecord {
    /// Sync entry.
    pub sync: String,
    /// Source cluster.
    pub source: String,
    /// Target cluster.
    pub target: String,
    /// The key.
    pub key: KeyRef,
    /// The diff's decision.
    pub action: Action,
    /// What happened.
    pub status: Status,
    /// Why it was blocked or in conflict, or what drifted.
    pub reason: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
    /// Wall time of the job.
    pub duration_ms: u64,
    /// Fingerprint of the key material (never the material).
    pub fingerprint: Option<String>,
    /// Anything the operator should know about a job that succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Attempts made, when transient errors were retried (absent when 1 or none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
}

/// One delivery to an associated resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NotificationRecord {
    /// Sync entry.
    pub sync: String,
    /// Resource name.
    pub resource: String,
    /// Key id (hex).
    pub key_id: String,
    /// `synced` or `deleted`.
    pub event: String,
    /// `sent` or `failed`.
    pub status: String,
    /// The HTTP status, if one came back.
    pub http_status: Option<u16>,
    /// Why it failed (never a token or secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Delivery attempts made (0 when nothing could be sent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
}

/// The report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "hsm-sync report")]
pub struct Report {
    /// Report format version (1).
    pub version: u32,
    /// `plan`, `apply` or `notify`.
    pub command: String,
    /// The plan file.
    pub plan: String,
    /// RFC 3339 UTC.
    pub started_at: String,
    /// RFC 3339 UTC.
    pub finished_at: String,
    /// Counts.
    pub summary: Summary,
    /// Every job's outcome.
    pub jobs: Vec<JobRecord>,
    /// Every notification's outcome.
    pub notifications: Vec<NotificationRecord>,
    /// Where the run's wall time went (absent for `notify`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timings: Option<Timings>,
}

/// Where the wall time of a `plan` or `apply` went, in milliseconds: what an operator
/// sizing a maintenance window needs, and what the benchmark reads (issue 6).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Timings {
    /// Logging in to every token in scope and proving lineage.
    pub connect_ms: u64,
    /// Reading the inventories (side by side).
    pub inventory_ms: u64,
    /// Computing the diff.
    pub diff_ms: u64,
    /// Running the jobs (apply).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execute_ms: Option<u64>,
    /// Recording lifecycle events on the sources and notifying (apply).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify_ms: Option<u64>,
}

/// Whole milliseconds since `t`.
pub fn ms_since(t: std::time::Instant) -> u64 {
    t.elapsed().as_millis() as u64
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

/// RFC 3339 UTC, seconds precision.
pub fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

impl Report {
    /// Builds a report of a diff; `outcomes` is `None` for a plan (every job pending).
    pub fn new(command: &str, plan: &Path, started: SystemTime, diff: &Diff, outcomes: Option<&[Outcome]>) -> Report {
        let mut summary = Summary::default();
        let mut jobs = Vec::with_capacity(diff.items.len());
        for (i, it) in diff.items.iter().enumerate() {
            let o = outcomes.and_then(|o| o.get(i));
            match it.action {
                Action::Create => summary.create += 1,
                Action::Update => summary.update += 1,
                Action::Delete => summary.delete += 1,
                Action::Unchanged => summary.unchanged += 1,
                Action::Conflict => summary.conflict += 1,
                Action::Blocked => summary.blocked += 1,
            }
            if o.is_some_and(|o| o.status == Status::Failed) {
                summary.failed += 1;
            }
            jobs.push(JobRecord {
                sync: it.sync.clone(),
                source: it.source.clone(),
                target: it.target.clone(),
                key: it.key.clone(),
                action: it.action,
                status: o.map_or(Status::Pending, |o| o.status),
                reason: it.reason.clone(),
                error: o.and_then(|o| o.error.clone()),
                duration_ms: o.map_or(0, |o| o.duration_ms),
                fingerprint: o.and_then(|o| o.fingerprint.clone()).or_else(|| it.fingerprint.clone()),
                note: o.and_then(|o| o.note.clone()),
                attempts: o.map(|o| o.attempts).filter(|n| *n > 1),
            });
        }
        Report {
            version: 1,
            command: command.into(),
            plan: plan.display().to_string(),
            started_at: timestamp(started),
            finished_at: timestamp(SystemTime::now()),
            summary,
            jobs,
            notifications: Vec::new(),
            timings: None,
        }
    }
}

/// The JSON Schema of the report (`schemas/report.schema.json`).
pub fn schema() -> schemars::Schema {
    schemars::schema_for!(Report)
}

/// Writes `value` as pretty JSON to `path` atomically (see [`write_bytes_atomic`]).
pub fn write_atomic<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec_pretty(value)?;
    bytes.push(b'\n');
    write_bytes_atomic(path, &bytes)
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, synced,
/// then renamed over the destination, so a reader sees the whole file or none.
pub fn write_bytes_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}
