//! `hsm-sync man`: one man page (roff) for the whole command line. clap_mangen renders
//! each command's synopsis, description and options from the clap types that parse them;
//! every subcommand gets its own `.SS` under COMMANDS, so `man hsm-sync` alone documents
//! everything (no `hsm-sync-plan(1)` pages to install and keep in step). The exit codes
//! and environment of CONTRACT.md §2 close the page.

use std::io;

use clap::CommandFactory;
use clap_mangen::Man;
use miette::IntoDiagnostic;
use roff::{bold, roman, Roff};

use crate::cli::Cli;
use crate::error::Result;
use crate::exit::ExitStatus;
use crate::output::Printer;

/// The exit codes of CONTRACT.md §2, as the EXIT STATUS section lists them.
const EXIT_CODES: &[(&str, &str)] = &[
    ("0", "Success; for plan --detailed-exitcode, everything is in sync."),
    (
        "1",
        "Error, nothing changed: a bad plan, a failed login or lineage proof, a stale saved plan, \
         a missing module, an unknown handle.",
    ),
    ("2", "plan --detailed-exitcode: changes are pending."),
    (
        "3",
        "apply or sync-key finished, but some job or notification failed, or conflicts, blocked \
         keys or empty selectors remain, or the report could not be written after changes were \
         made; plan --detailed-exitcode: nothing to apply, but conflicts, blocked keys or empty \
         selectors remain.",
    ),
    (
        "4",
        "notify refused: a selected key was synced or notified within the cooldown; nothing was sent.",
    ),
    (
        "130, 143",
        "Interrupted by SIGINT or SIGTERM: no new job was started, jobs in flight were finished and \
         verified, and the report was written with the rest skipped. A second signal stops at once.",
    ),
];

/// Environment variables hsm-sync itself reads (PIN and connection-string variables are
/// the ones a plan names).
const ENVIRONMENT: &[(&str, &str)] = &[
    ("NO_COLOR", "When set and not empty, no colour is printed."),
    (
        "HSM_SYNC_SOFTHSM_MODULE",
        "The SoftHSM2 module demo uses, when it is not in a standard place.",
    ),
    (
        "HSM_SYNC_LOCK_DIR",
        "Where apply and sync-key keep their per-token lock files (default: the system's temporary directory).",
    ),
];

/// The whole man page, as roff source.
fn page() -> io::Result<String> {
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let man = Man::new(cmd.clone()).manual("hsm-sync manual");
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    man.render_options_section(&mut out)?;
    // The apostrophe string clap_mangen defines before every section is defined once, here.
    let mut page = String::new();
    let mut preamble = true;
    for line in String::from_utf8_lossy(&out).lines() {
        if preamble || !is_preamble(line) {
            page.push_str(line);
            page.push('\n');
        }
        preamble &= is_preamble(line);
    }

    page.push_str(&Roff::new().control("SH", ["COMMANDS"]).to_roff());
    // Global flags are described once, under OPTIONS, not again under every command.
    let globals: Vec<String> = cmd
        .get_arguments()
        .filter(|a| a.is_global_set())
        .map(|a| a.get_id().to_string())
        .collect();
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        command(&mut page, sub, &globals)?;
    }

    let mut tail = Roff::new();
    tail.control("SH", ["EXIT STATUS"]);
    for (code, text) in EXIT_CODES {
        tail.control("TP", []).text([bold(*code)]).text([roman(*text)]);
    }
    tail.control("SH", ["ENVIRONMENT"]);
    for (name, text) in ENVIRONMENT {
        tail.control("TP", []).text([bold(*name)]).text([roman(*text)]);
    }
    if let Some(version) = cmd.get_version() {
        tail.control("SH", ["VERSION"]).text([roman(format!("v{version}"))]);
    }
    page.push_str(&tail.to_roff());
    Ok(page)
}

/// Whether `line` is part of the apostrophe preamble that roff writes before each render.
fn is_preamble(line: &str) -> bool {
    line.starts_with(".ie \\n(.g .ds Aq") || line.starts_with(".el .ds Aq")
}

/// One command's `.SS`: its synopsis, description and options (less the `globals`), then
/// its own subcommands.
fn command(page: &mut String, cmd: &clap::Command, globals: &[String]) -> io::Result<()> {
    let name = cmd.get_bin_name().unwrap_or_else(|| cmd.get_name());
    page.push_str(&Roff::new().control("SS", [name]).to_roff());
    let mut own = cmd.clone();
    for id in globals {
        own = own.mut_arg(id, |a| a.hide(true));
    }
    let man = Man::new(own);
    let mut out = Vec::new();
    man.render_synopsis_section(&mut out)?;
    if cmd.get_about().is_some() || cmd.get_long_about().is_some() {
        out.extend_from_slice(b".PP\n");
        man.render_description_section(&mut out)?;
    }
    if cmd.get_arguments().any(|a| !a.is_hide_set() && !a.is_global_set()) {
        man.render_options_section(&mut out)?;
    }
    // The section headings clap_mangen writes would end COMMANDS.
    for line in String::from_utf8_lossy(&out).lines() {
        if !(line.starts_with(".SH") || is_preamble(line)) {
            page.push_str(line);
            page.push('\n');
        }
    }
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        command(page, sub, globals)?;
    }
    Ok(())
}

pub(super) fn run(p: &Printer) -> Result<ExitStatus> {
    p.out(&page().into_diagnostic()?);
    Ok(ExitStatus::Success)
}
