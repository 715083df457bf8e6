//! `hsm-sync apply PLAN [--jobs N] [--report FILE] [--allow-destroy] [--quiet]`

use std::time::SystemTime;

use miette::{miette, IntoDiagnostic, WrapErr};

use crate::cli::ApplyArgs;
use crate::diff::Action;
use crate::executor::execute;
use crate::exit::ExitStatus;
use crate::progress;
use crate::report::{write_atomic, Report, Status};

use super::{online_diff, Ui};

pub(super) fn run(ui: &Ui, a: &ApplyArgs) -> miette::Result<ExitStatus> {
    let started = SystemTime::now();
    let plan = ui.load(&a.plan)?;
    let (tokens, diff) = online_diff(&plan)?;
    let deletions = diff.count(Action::Delete);
    if deletions > 0 && !a.allow_destroy {
        return Err(miette!(
            code = "apply::destroy_not_allowed",
            help = "review them with `hsm-sync plan`, then re-run apply with --allow-destroy",
            "{deletions} deletion(s) pending and --allow-destroy not given: nothing was changed"
        ));
    }
    let threads = a
        .jobs
        .or(plan.options.parallelism)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let reporter = progress::for_terminal(a.quiet);
    let outcomes = execute(&diff, &tokens, threads, a.allow_destroy, reporter.as_ref());
    let mut report = Report::new("apply", &a.plan, started, &diff, Some(&outcomes));
    // CONTRACT.md §5: lifecycle events recorded on the sources and announced; a failed
    // notification is exit 3 and never undoes the sync.
    let notified = crate::notify::after_apply(&plan, &tokens, &diff, &outcomes);
    report.notifications = notified.records.clone();
    report.finished_at = crate::report::timestamp(SystemTime::now());
    if let Some(path) = &a.report {
        write_atomic(path, &report)
            .into_diagnostic()
            .wrap_err_with(|| format!("writing the report to {}", path.display()))?;
    }
    for (job, o) in report.jobs.iter().zip(&outcomes) {
        if o.status == Status::Failed {
            eprintln!(
                "failed: {} → {} {} {}: {}",
                job.source,
                job.target,
                job.key.id,
                job.key.label,
                o.error.as_deref().unwrap_or("unknown error")
            );
        } else if !a.quiet && matches!(job.action, Action::Conflict | Action::Blocked) {
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
        a.report
            .as_ref()
            .map(|p| format!("; report: {}", p.display()))
            .unwrap_or_default()
    );
    crate::notify::print_outcome(&notified.records, &notified.warnings);
    Ok(if failed_or_left > 0 || notified.failed() {
        ExitStatus::Incomplete
    } else {
        ExitStatus::Success
    })
}

fn count_failed(report: &Report, action: Action) -> usize {
    report
        .jobs
        .iter()
        .filter(|j| j.action == action && j.status == Status::Failed)
        .count()
}
