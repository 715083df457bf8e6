//! `hsm-sync apply PLAN|SAVED [--jobs N] [--report FILE] [--junit FILE] [--allow-destroy]
//! [--quiet]`: executes the diff. A saved plan (`plan --out`) is applied only if every
//! token in its scope is as it was when the plan was made.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::cli::ApplyArgs;
use crate::diff::Action;
use crate::error::Result;
use crate::exit::ExitStatus;
use crate::inventory::Fingerprints;
use crate::limits::Limits;
use crate::output::Printer;
use crate::plan::Plan;
use crate::progress;
use crate::report::{write_atomic, write_bytes_atomic, Report, Status};
use crate::saved::{self, SavedPlan};

use super::error::CommandError;
use super::{load, load_text};
use crate::pipeline::{online_diff, Online};

/// How a set of jobs runs and where its results go; shared by `apply` and `sync-key`.
pub(super) struct RunOptions<'a> {
    /// The command name for the report.
    pub command: &'a str,
    /// The plan as the operator named it, for the report.
    pub plan_name: PathBuf,
    /// How wide the run goes.
    pub limits: Limits,
    /// Deletions allowed.
    pub allow_destroy: bool,
    /// Off a terminal, how often a progress line is printed.
    pub progress_interval: std::time::Duration,
    /// JSON report file.
    pub report: Option<&'a Path>,
    /// JUnit file.
    pub junit: Option<&'a Path>,
    /// Print the `Apply:` summary line (`sync-key` prints what it copied instead).
    pub summary: bool,
}

pub(super) fn run(p: &Printer, a: &ApplyArgs) -> Result<ExitStatus> {
    let started = SystemTime::now();
    // From the start: a signal during login or the inventory then starts no job at all
    // (the report still says so).
    stop_handlers(p);
    // Read off the main thread: SoftHSM numbers objects by heap address (PKCS11-NOTES.md),
    // and parsing a large saved plan on the thread that later loads the token left it
    // numbering some keys differently from `inventory` (issue 16: wrong handles in the
    // report). A thread's own allocator arena keeps the main heap as a fresh run has it.
    let read = std::thread::scope(|s| s.spawn(|| saved::read(&a.plan)).join());
    let read = read.unwrap_or_else(|p| std::panic::resume_unwind(p));
    let (plan, saved) = match read {
        Ok(Some(saved)) => (
            load_text(p, Path::new(&saved.plan_path), saved.plan_text.clone())?,
            Some(saved),
        ),
        Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {
            return Err(CommandError::NotAPlan {
                plan: a.plan.display().to_string(),
                error: e.to_string(),
            }
            .into())
        }
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            return Err(CommandError::SavedPlanInvalid {
                plan: a.plan.display().to_string(),
                error: e.to_string(),
            }
            .into())
        }
        // Not a saved plan, or unreadable: the plan loader says which, with its diagnostics.
        _ => (load(p, &a.plan)?, None),
    };
    let shard = match (&saved, a.shard) {
        (Some(saved), Some(s)) if saved.shard != Some(s) => {
            return Err(CommandError::ShardMismatch {
                given: s,
                saved: saved
                    .shard
                    .map_or("the whole diff".to_string(), |s| format!("shard {s}")),
            }
            .into())
        }
        (Some(saved), _) => saved.shard,
        (None, s) => s,
    };
    // A saved plan's digests cover every key's fingerprint; a plan file's new keys are
    // fingerprinted by their copy jobs (one round trip less per key).
    let fingerprints = match saved {
        Some(_) => Fingerprints::All,
        None => Fingerprints::Compared,
    };
    let limits = Limits::new(a.jobs, plan.options.parallelism);
    let online = online_diff(
        &plan,
        shard,
        Some(crate::pipeline::Writer {
            command: "apply",
            wait: a.lock_timeout.unwrap_or(crate::state::NO_WAIT),
        }),
        fingerprints,
        limits,
        false,
    )?;
    if let Some(saved) = &saved {
        check_fresh(saved, &plan, &online, started)?;
    }
    let deletions = online.diff.count(Action::Delete);
    if deletions > 0 && !a.allow_destroy {
        return Err(CommandError::DestroyNotAllowed(deletions).into());
    }
    let opts = RunOptions {
        command: "apply",
        plan_name: saved
            .as_ref()
            .map_or_else(|| a.plan.clone(), |s| PathBuf::from(&s.plan)),
        limits,
        allow_destroy: a.allow_destroy,
        progress_interval: a.progress_interval,
        report: a.report.as_deref(),
        junit: a.junit.as_deref(),
        summary: true,
    };
    let (_report, status) = run_jobs(p, &plan, &online, &opts, started)?;
    Ok(status)
}

/// Refuses a saved plan when a token in scope changed since it was made, or when the
/// diff it would run is not the one that was reviewed.
fn check_fresh(saved: &SavedPlan, plan: &Plan, online: &Online, started: SystemTime) -> Result<(), CommandError> {
    let mut changes = saved::changes(&saved.tokens, &online.token_states(plan, saved.shard));
    if changes.is_empty() {
        let now = Report::new("plan", Path::new(&saved.plan), started, &online.diff, None);
        if !saved::same_jobs(&saved.jobs, &now.jobs) {
            changes.push("the diff is no longer the one that was saved".into());
        }
    }
    if changes.is_empty() {
        return Ok(());
    }
    Err(CommandError::StaleSavedPlan {
        made: saved.created_at.clone(),
        changes: changes.join("; "),
    })
}

/// Runs the diff's jobs, writes the report and JUnit files, prints what happened, and
/// says how the run ends (exit 3 when a job failed or a conflict or blocked key remains).
pub(super) fn run_jobs(
    p: &Printer,
    plan: &Plan,
    online: &Online,
    o: &RunOptions,
    started: SystemTime,
) -> Result<(Report, ExitStatus)> {
    let stop = stop_handlers(p);
    let run = crate::pipeline::execute(
        plan,
        online,
        &crate::pipeline::Execution {
            command: o.command,
            plan_name: &o.plan_name,
            limits: o.limits,
            allow_destroy: o.allow_destroy,
            reporter: progress::for_output(p.quiet(), p.log(), o.progress_interval).as_ref(),
            started,
            stop,
        },
    )?;
    for w in &run.warnings {
        p.warn(w);
    }
    // Printed even with --quiet: an empty selector is a failure of the run (CONTRACT.md §1).
    for w in &run.report.warnings {
        p.warn(&w.message);
    }
    let (report, notified) = (run.report, run.notified);
    // The record of what was done is written before it is printed; if it cannot be
    // written, the summary is still printed and the run exits 3 when tokens were changed.
    let mut unwritten = Vec::new();
    let report_stage = (o.report.is_some() || o.junit.is_some()).then(|| crate::stage::start("report"));
    if let Some(path) = o.report {
        let written = if path == Path::new("-") {
            p.json(&report)
        } else {
            write_atomic(path, &report)
        };
        if let Err(e) = written {
            unwritten.push(format!("writing the report to {}: {e}", path.display()));
        }
    }
    if let Some(path) = o.junit {
        let written = crate::junit::render(&report)
            .map_err(std::io::Error::other)
            .and_then(|xml| write_bytes_atomic(path, xml.as_bytes()));
        if let Err(e) = written {
            unwritten.push(format!("writing the JUnit file to {}: {e}", path.display()));
        }
    }
    drop(report_stage);
    for job in &report.jobs {
        if job.status == Status::Failed {
            p.error_line(&format!(
                "failed: {} → {} {} {}: {}",
                job.source,
                job.target,
                job.key.id,
                job.key.label,
                job.error.as_deref().unwrap_or("unknown error")
            ));
        } else if matches!(job.action, Action::Conflict | Action::Blocked) {
            p.error_line(&format!(
                "{}: {} → {} {} {}: {}",
                job.action.name(),
                job.source,
                job.target,
                job.key.id,
                job.key.label,
                crate::domain::reason::describe(job.reason, job.detail.as_deref())
            ));
            for h in crate::render::reason_helps(job.action, &job.reasons) {
                p.error_line(&format!("  help: {h}"));
            }
        }
    }
    let s = &report.summary;
    let failed_or_left = s.failed + s.conflict + s.blocked;
    // With `--report -` stdout is the report alone: the summary goes to stderr.
    let summary = if o.report == Some(Path::new("-")) {
        Printer::error_line
    } else {
        Printer::outln
    };
    if o.summary {
        summary(
            p,
            &format!(
                "Apply: {} created, {} updated, {} deleted, {} unchanged; {} conflict, {} blocked, {} failed ({} ms){}",
                s.create - count_failed(&report, Action::Create),
                s.update - count_failed(&report, Action::Update),
                s.delete - count_failed(&report, Action::Delete),
                s.unchanged,
                s.conflict,
                s.blocked,
                s.failed,
                SystemTime::now().duration_since(started).map_or(0, |d| d.as_millis()),
                o.report
                    .filter(|path| *path != Path::new("-") && unwritten.is_empty())
                    .map(|path| format!("; report: {}", path.display()))
                    .unwrap_or_default()
            ),
        );
    }
    crate::render::print_notifications(p, &notified.records, &notified.warnings);
    for n in &notified.notes {
        p.error_line(&format!("state: {n}"));
    }
    if !unwritten.is_empty() {
        let changed = report
            .jobs
            .iter()
            .any(|j| j.action.is_change() && j.status == Status::Ok);
        let e = miette::Report::new(CommandError::RecordNotWritten {
            unwritten: unwritten.join("; "),
            help: if changed {
                "the tokens were changed as the summary says; re-run `hsm-sync plan` to see their state"
            } else {
                "nothing was changed"
            },
        });
        return Err(if changed {
            crate::error::Error::AfterChanges(e)
        } else {
            crate::error::Error::NothingChanged(e)
        });
    }
    if let Some(sig) = stop.signal() {
        let skipped = report.jobs.iter().filter(|j| j.status == Status::Skipped).count();
        p.error_line(&format!(
            "interrupted by {}: the jobs in flight finished and were verified, {skipped} job(s) skipped; run apply again to finish",
            signal_name(sig)
        ));
        return Ok((report, ExitStatus::Interrupted(sig)));
    }
    let status = if failed_or_left > 0 || notified.failed() || !report.warnings.is_empty() {
        ExitStatus::Incomplete
    } else {
        ExitStatus::Success
    };
    Ok((report, status))
}

/// The stop flags, with SIGINT/SIGTERM handlers installed (once per process). Without
/// them a signal would kill the run mid-call, leaving half-made objects on a target.
pub(super) fn stop_handlers(p: &Printer) -> &'static crate::interrupt::Stop {
    crate::interrupt::install().unwrap_or_else(|e| {
        p.warn(&format!(
            "cannot catch SIGINT/SIGTERM ({e}): a signal stops this run at once"
        ));
        crate::interrupt::never()
    })
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        2 => "SIGINT",
        15 => "SIGTERM",
        _ => "a signal",
    }
}

fn count_failed(report: &Report, action: Action) -> usize {
    report
        .jobs
        .iter()
        .filter(|j| j.action == action && j.status == Status::Failed)
        .count()
}
