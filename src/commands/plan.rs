//! `hsm-sync plan PLAN [--format text|json|markdown] [--detailed-exitcode]`: the dry run.
//! It stops after the diff; nothing is written to any token.

use std::io::IsTerminal;
use std::time::SystemTime;

use miette::IntoDiagnostic;

use crate::cli::{PlanArgs, PlanFormat};
use crate::exit::ExitStatus;
use crate::render;
use crate::report::Report;

use super::{online_diff, Ui};

pub(super) fn run(ui: &Ui, a: &PlanArgs) -> miette::Result<ExitStatus> {
    let started = SystemTime::now();
    let plan = ui.load(&a.plan)?;
    let (_tokens, diff) = online_diff(&plan)?;
    match a.format {
        PlanFormat::Text => {
            let color = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            print!("{}", render::text(&diff, color));
        }
        PlanFormat::Markdown => print!("{}", render::markdown(&diff, &a.plan.display().to_string())),
        PlanFormat::Json => {
            let report = Report::new("plan", &a.plan, started, &diff, None);
            println!("{}", serde_json::to_string_pretty(&report).into_diagnostic()?);
        }
    }
    Ok(if a.detailed_exitcode && diff.has_changes() {
        ExitStatus::ChangesPending
    } else {
        ExitStatus::Success
    })
}
