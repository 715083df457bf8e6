//! `hsm-sync plan PLAN [--format text|json|markdown] [--out SAVED] [--detailed-exitcode]`:
//! the dry run. It stops after the diff; nothing is written to any token.

use std::time::SystemTime;

use miette::{IntoDiagnostic, WrapErr};

use crate::cli::{PlanArgs, PlanFormat};
use crate::error::Result;
use crate::exit::ExitStatus;
use crate::output::Printer;
use crate::render;
use crate::report::{timestamp, write_atomic, JobRecord, PlanJson, Report};
use crate::saved::{self, SavedPlan};

use super::load;
use crate::inventory::Fingerprints;
use crate::pipeline::online_diff;

pub(super) fn run(p: &Printer, a: &PlanArgs) -> Result<ExitStatus> {
    let started = SystemTime::now();
    let plan = load(p, &a.plan)?;
    let limits = crate::limits::Limits::new(None, plan.options.parallelism);
    let online = online_diff(&plan, a.shard, None, Fingerprints::All, limits, a.refresh)?;
    let diff = &online.diff;
    let mut report = Report::header("plan", &a.plan, started, diff, None);
    report.timings = Some(online.timings.clone());
    if let Some(out) = &a.out {
        let jobs = JobRecord::all(diff, None);
        let saved = SavedPlan {
            kind: saved::KIND.into(),
            version: 1,
            plan: a.plan.display().to_string(),
            plan_path: saved::absolute(&a.plan).display().to_string(),
            plan_text: plan.source.text().to_string(),
            created_at: timestamp(started),
            shard: a.shard,
            tokens: online.token_states(&plan, a.shard),
            summary: report.summary.clone(),
            jobs,
        };
        write_atomic(out, &saved)
            .into_diagnostic()
            .wrap_err_with(|| format!("writing the saved plan to {}", out.display()))?;
        // The hint is the command that will work: a saved plan that deletes needs the flag.
        let destroy = if saved.summary.delete > 0 {
            " --allow-destroy"
        } else {
            ""
        };
        p.status(&format!(
            "Saved plan: {} (apply it with `hsm-sync apply {}{destroy}`)",
            out.display(),
            out.display()
        ));
    }
    match a.format {
        PlanFormat::Text => {
            let color = p.stdout_color();
            p.out(&render::text(diff, color));
        }
        PlanFormat::Markdown => p.out(&render::markdown(diff, &a.plan.display().to_string())),
        PlanFormat::Json => p.json(&PlanJson { header: &report, diff }).into_diagnostic()?,
    }
    for w in &diff.notes {
        if a.format != PlanFormat::Text {
            p.warn(&w.message);
        }
    }
    // CONTRACT.md §2: changes pending win (2); else anything left that apply would not
    // fix (conflicts, blocked keys, empty selectors) is 3, never a green "in sync".
    Ok(if !a.detailed_exitcode {
        ExitStatus::Success
    } else if diff.has_changes() {
        ExitStatus::ChangesPending
    } else if diff.has_leftovers() {
        ExitStatus::Incomplete
    } else {
        ExitStatus::Success
    })
}
