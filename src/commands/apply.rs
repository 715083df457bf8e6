//! `hsm-sync apply PLAN|SAVED [--jobs N] [--report FILE] [--junit FILE] [--allow-destroy]
//! [--quiet]`: executes the diff. A saved plan (`plan --out`) is applied only if every
//! token in its scope is as it was when the plan was made.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use miette::{miette, IntoDiagnostic, WrapErr};

use crate::cli::ApplyArgs;
use crate::diff::Action;
use crate::executor::execute;
use crate::exit::ExitStatus;
use crate::inventory::Fingerprints;
use crate::plan::Plan;
use crate::progress;
use crate::report::{write_atomic, write_bytes_atomic, Report, Status};
use crate::saved::{self, SavedPlan};

use super::{online_diff, Online, Ui};

/// How a set of jobs runs and where its results go; shared by `apply` and `sync-key`.
pub(super) struct RunOptions<'a> {
    /// The command name for the report.
    pub command: &'a str,
    /// The plan as the operator named it, for the report.
    pub plan_name: PathBuf,
    /// Worker threads.
    pub threads: usize,
    /// Deletions allowed.
    pub allow_destroy: bool,
    /// No bars, no per-job lines.
    pub quiet: bool,
    /// JSON report file.
    pub report: Option<&'a Path>,
    /// JUnit file.
    pub junit: Option<&'a Path>,
}

pub(super) fn run(ui: &Ui, a: &ApplyArgs) -> miette::Result<ExitStatus> {
    let started = SystemTime::now();
    let (plan, saved) = match saved::read(&a.plan) {
        Ok(Some(saved)) => (
            ui.load_text(Path::new(&saved.plan_path), saved.plan_text.clone())?,
            Some(saved),
        ),
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            return Err(miette!(
                code = "apply::saved_plan_invalid",
                help = "make a new one with `hsm-sync plan PLAN --out SAVED`",
                "{} looks like a saved plan but is not a valid one: {e}",
                a.plan.display()
            ))
        }
        // Not a saved plan, or unreadable: the plan loader says which, with its diagnostics.
        _ => (ui.load(&a.plan)?, None),
    };
    let shard = match (&saved, a.shard) {
        (Some(saved), Some(s)) if saved.shard != Some(s) => {
            return Err(miette!(
                code = "apply::shard_mismatch",
                help = "a saved plan carries its shard; apply it without --shard",
                "--shard {s} given, but the saved plan holds {}",
                saved
                    .shard
                    .map_or("the whole diff".to_string(), |s| format!("shard {s}"))
            ))
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
    let online = online_diff(&plan, shard, Some("apply"), fingerprints)?;
    if let Some(saved) = &saved {
        check_fresh(saved, &plan, &online, started)?;
    }
    let deletions = online.diff.count(Action::Delete);
    if deletions > 0 && !a.allow_destroy {
        return Err(miette!(
            code = "apply::destroy_not_allowed",
            help = "review them with `hsm-sync plan`, then re-run apply with --allow-destroy",
            "{deletions} deletion(s) pending and --allow-destroy not given: nothing was changed"
        ));
    }
    let opts = RunOptions {
        command: "apply",
        plan_name: saved
            .as_ref()
            .map_or_else(|| a.plan.clone(), |s| PathBuf::from(&s.plan)),
        threads: threads(a.jobs, &plan),
        allow_destroy: a.allow_destroy,
        quiet: a.quiet,
        report: a.report.as_deref(),
        junit: a.junit.as_deref(),
    };
    let (_report, status) = run_jobs(&plan, &online, &opts, started)?;
    Ok(status)
}

/// Worker threads: `--jobs`, else `options.parallelism`, else the available CPUs.
pub(super) fn threads(jobs: Option<usize>, plan: &Plan) -> usize {
    jobs.or(plan.options.parallelism)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Refuses a saved plan when a token in scope changed since it was made, or when the
/// diff it would run is not the one that was reviewed.
fn check_fresh(saved: &SavedPlan, plan: &Plan, online: &Online, started: SystemTime) -> miette::Result<()> {
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
    Err(miette!(
        code = "apply::stale_saved_plan",
        help = "run `hsm-sync plan --out` again and review the new diff; nothing was changed",
        "saved plan is stale (made {}): {}",
        saved.created_at,
        changes.join("; ")
    ))
}

/// Runs the diff's jobs, writes the report and JUnit files, prints what happened, and
/// says how the run ends (exit 3 when a job failed or a conflict or blocked key remains).
pub(super) fn run_jobs(
    plan: &Plan,
    online: &Online,
    o: &RunOptions,
    started: SystemTime,
) -> miette::Result<(Report, ExitStatus)> {
    let t = std::time::Instant::now();
    let journals = write_journals(online)?;
    let reporter = progress::for_terminal(o.quiet);
    let outcomes = execute(
        &online.diff,
        &online.tokens,
        o.threads,
        o.allow_destroy,
        reporter.as_ref(),
    );
    for target in journals {
        let cleared = online.tokens.get(&target).session().and_then(|s| s.journal_clear());
        if let Err(e) = cleared {
            // Harmless: the next run reads it, finds every copy verified, and replaces it.
            eprintln!("warning: the in-flight journal on `{target}` was not removed: {e}");
        }
    }
    let execute_ms = crate::report::ms_since(t);
    let mut report = Report::new(o.command, &o.plan_name, started, &online.diff, Some(&outcomes));
    // CONTRACT.md §5: lifecycle events recorded on the sources and announced; a failed
    // notification is exit 3 and never undoes the sync.
    let t = std::time::Instant::now();
    let notified = crate::notify::after_apply(plan, &online.tokens, &online.diff, &outcomes, o.threads);
    report.notifications = notified.records.clone();
    report.timings = Some(crate::report::Timings {
        execute_ms: Some(execute_ms),
        notify_ms: Some(crate::report::ms_since(t)),
        ..online.timings.clone()
    });
    report.finished_at = crate::report::timestamp(SystemTime::now());
    if let Some(path) = o.report {
        write_atomic(path, &report)
            .into_diagnostic()
            .wrap_err_with(|| format!("writing the report to {}", path.display()))?;
    }
    if let Some(path) = o.junit {
        let xml = crate::junit::render(&report).into_diagnostic()?;
        write_bytes_atomic(path, xml.as_bytes())
            .into_diagnostic()
            .wrap_err_with(|| format!("writing the JUnit file to {}", path.display()))?;
    }
    for job in &report.jobs {
        if job.status == Status::Failed {
            eprintln!(
                "failed: {} → {} {} {}: {}",
                job.source,
                job.target,
                job.key.id,
                job.key.label,
                job.error.as_deref().unwrap_or("unknown error")
            );
        } else if !o.quiet && matches!(job.action, Action::Conflict | Action::Blocked) {
            eprintln!(
                "{}: {} → {} {} {}: {}",
                job.action.name(),
                job.source,
                job.target,
                job.key.id,
                job.key.label,
                job.reason.as_deref().unwrap_or("")
            );
        }
    }
    let s = &report.summary;
    let failed_or_left = s.failed + s.conflict + s.blocked;
    println!(
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
            .map(|p| format!("; report: {}", p.display()))
            .unwrap_or_default()
    );
    crate::render::print_notifications(&notified.records, &notified.warnings);
    let status = if failed_or_left > 0 || notified.failed() {
        ExitStatus::Incomplete
    } else {
        ExitStatus::Success
    };
    Ok((report, status))
}

/// Writes each target's in-flight journal (the identities about to be created there)
/// before any copy is made; returns the targets that have one.
fn write_journals(online: &Online) -> miette::Result<Vec<String>> {
    let mut per_target: Vec<(String, Vec<String>)> = Vec::new();
    for it in online.diff.items.iter().filter(|i| i.action == Action::Create) {
        let Some(k) = &it.source_key else { continue };
        let entry = k.identity().journal_key();
        match per_target.iter_mut().find(|(t, _)| **t == *it.target) {
            Some((_, v)) => v.push(entry),
            None => per_target.push((it.target.to_string(), vec![entry])),
        }
    }
    for (target, entries) in &per_target {
        online.tokens.get(target).session()?.journal_write(entries)?;
    }
    Ok(per_target.into_iter().map(|(t, _)| t).collect())
}

fn count_failed(report: &Report, action: Action) -> usize {
    report
        .jobs
        .iter()
        .filter(|j| j.action == action && j.status == Status::Failed)
        .count()
}
