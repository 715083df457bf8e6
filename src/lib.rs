//! hsm-sync keeps cryptographic keys in step across PKCS#11 HSM clusters, declaratively.
//!
//! The pipeline, one module per stage:
//!
//! ```text
//! plan file ─▶ plan::raw ─▶ plan::validate ─▶ plan::model
//!           ─▶ connect (login once, prove lineage) ─▶ inventory
//!           ─▶ diff (pure data) ─▶ executor (rayon) ─▶ report, notify
//! ```
//!
//! Only [`hsm`] names `cryptoki`; only [`progress`] names `indicatif`; only [`plan`]
//! names `serde_yaml`. The binary is a thin `main` over [`run`].

#![warn(missing_docs)]

pub mod cli;
pub mod commands;
pub mod connect;
pub mod credentials;
pub mod diff;
pub mod domain;
pub mod executor;
pub mod exit;
pub mod hsm;
pub mod inventory;
pub mod junit;
pub mod lock;
pub mod notify;
pub mod plan;
pub mod progress;
pub mod render;
pub mod report;
pub mod saved;

use std::ffi::OsString;
use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use miette::{Diagnostic, GraphicalReportHandler, GraphicalTheme, JSONReportHandler};

use cli::DiagnosticsFormat;
use exit::ExitStatus;

/// Renders a diagnostic for stderr: miette's graphical report (colour only on a terminal
/// without `NO_COLOR`), or miette's JSON for CI annotations.
pub fn render_diagnostic(d: &dyn Diagnostic, format: DiagnosticsFormat) -> String {
    let mut out = String::new();
    let result = match format {
        DiagnosticsFormat::Json => JSONReportHandler::new().render_report(&mut out, d),
        DiagnosticsFormat::Human => {
            let color = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            let theme = if color {
                GraphicalTheme::unicode()
            } else {
                GraphicalTheme::unicode_nocolor()
            };
            GraphicalReportHandler::new_themed(theme).render_report(&mut out, d)
        }
    };
    if result.is_err() {
        out = format!("error: {d}");
    }
    out
}

/// Parses `args`, runs the command, and maps the outcome to an exit code
/// (CONTRACT.md §2). Errors are rendered on stderr.
pub fn run<I: IntoIterator<Item = OsString>>(args: I) -> ExitCode {
    let cli = match cli::Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            // Help and version are successes; usage errors are errors (exit 1, not clap's 2,
            // which the contract reserves for "changes pending").
            return if e.use_stderr() {
                ExitStatus::Error.into()
            } else {
                ExitStatus::Success.into()
            };
        }
    };
    match commands::dispatch(&cli) {
        Ok(status) => status.into(),
        Err(report) => {
            eprintln!("{}", render_diagnostic(report.as_ref(), cli.diagnostics));
            ExitStatus::Error.into()
        }
    }
}
