//! hsm-sync keeps cryptographic keys in step across PKCS#11 HSM clusters, declaratively.
//!
//! The pipeline, run once by `pipeline.rs`:
//!
//! ```text
//! plan file ─▶ plan::raw ─▶ plan::validate ─▶ plan::model
//!           ─▶ connect (open, lock, login once, prove lineage) ─▶ inventory
//!           ─▶ diff (pure data) ─▶ executor (rayon, over the key-store port)
//!           ─▶ lifecycle records, notify ─▶ report, printer
//! ```
//!
//! The rooms, one concern each (`../shared/STYLE.md`):
//!
//! | room | holds |
//! |---|---|
//! | `main.rs`, [`run`] | parse, dispatch, map the outcome to an exit code |
//! | [`cli`] | clap types only |
//! | `error.rs`, `exit.rs` | the edge error and the one `ExitStatus` (CONTRACT.md §2) |
//! | [`domain`] | keys, opaque handles, wire formats, the key-kind table, fingerprints, reasons, shards, events, outcomes |
//! | [`plan`] | raw serde types, spans, validation rules, the validated model |
//! | [`credentials`] | PIN sources → secret types |
//! | `ceremony.rs` | `lineage import`'s key components: read, checked, XORed, check values (never shown) |
//! | [`hsm`] | the only room naming cryptoki: the key-store port, sessions, capabilities (the wrap-format probe), profiles, raw FFI, the `-vv` call trace |
//! | [`connect`] | tokens in scope: open, log in, negotiate each pair's wire format, prove lineage |
//! | `inventory.rs`, [`diff`] | what each token holds; the pure diff |
//! | `executor.rs` | jobs on a rayon pool: retry, adopt, repair, verify |
//! | `pipeline.rs` | connect → lock → inventory → diff → execute → record |
//! | `notify/` | lifecycle derivation, store, claims, cooldown, the `Sink` port |
//! | `output/`, `render.rs`, `progress.rs` | the `Printer` (and the `-v` log), renderings, progress drawn by one thread |
//! | `stage.rs` | the `-v` timing of each pipeline stage |
//! | [`report`], `saved.rs`, `junit.rs` | report and saved-plan types, atomic writes |
//! | `commands/` | arguments → pipeline → output → exit status |
//!
//! Never-arrows: `plan` names no token, notification or connection code; `diff` and
//! `report` never name `hsm`; `hsm` never names commands, the printer or progress. Only
//! `hsm` names `cryptoki` (and only `hsm/raw.rs` holds `unsafe`), only `progress.rs`
//! names `indicatif`, only `notify/sink/http.rs` names `ureq`, only `plan` names
//! `serde_yaml`.

#![warn(missing_docs, unreachable_pub)]
// Every `unsafe` block lives in `hsm/raw.rs`, the FFI edge; the compiler keeps it there.
#![deny(unsafe_code)]

mod ceremony;
pub mod cli;
mod commands;
pub mod connect;
pub mod credentials;
pub mod diff;
pub mod domain;
mod error;
mod executor;
mod exit;
pub mod hsm;
mod interrupt;
mod inventory;
mod junit;
mod limits;
mod notify;
mod output;
mod pipeline;
pub mod plan;
mod progress;
mod render;
pub mod report;
mod saved;
mod stage;
mod state;

use std::ffi::OsString;
use std::process::ExitCode;

use clap::Parser;

use exit::ExitStatus;
use output::Printer;

/// Parses `args`, runs the command, and maps the outcome to an exit code
/// (CONTRACT.md §2). Errors are rendered on stderr.
pub fn run<I: IntoIterator<Item = OsString>>(args: I) -> ExitCode {
    run_with(args, None)
}

/// [`run`] with stdout sent to `stdout` instead of the process's (the benchmark runs
/// commands in its own process and reads what they print).
pub fn run_with<I: IntoIterator<Item = OsString>>(args: I, stdout: Option<Box<dyn std::io::Write + Send>>) -> ExitCode {
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
    let quiet = matches!(&cli.command, cli::Command::Apply(a) if a.quiet);
    let printer = match stdout {
        Some(w) => Printer::with_stdout(cli.diagnostics, quiet, w),
        None => Printer::new(cli.diagnostics, quiet),
    }
    .with_log(cli.verbose);
    match commands::dispatch(&cli, &printer) {
        Ok(status) => status.into(),
        Err(e) => {
            printer.diagnostic(e.diagnostic());
            e.exit_status().into()
        }
    }
}
