//! `hsm-sync notify PLAN [--key SELECTOR] [--sync NAME] [--failed] [--report FILE]`: the
//! manual "renotify" of CONTRACT.md §5 (`--failed`: only the deliveries that failed, §2). Logs in to the sources only (nothing is synced, so no
//! lineage proof is needed), then lets [`crate::notify::renotify`] decide.

use std::time::{Duration, SystemTime};

use miette::{IntoDiagnostic, WrapErr};

use crate::cli::NotifyArgs;
use crate::connect::{log_in, open, refuse_session_handle};
use crate::diff::Diff;
use crate::error::Result;
use crate::exit::ExitStatus;
use crate::notify::{parse_selector, renotify, Renotify, Selection, DEFAULT_CLAIM_SETTLE};
use crate::output::Printer;
use crate::render::print_notifications;
use crate::report::{write_atomic, DeliveryStatus, Report};

use super::load;

pub(super) fn run(p: &Printer, a: &NotifyArgs) -> Result<ExitStatus> {
    let started = SystemTime::now();
    let plan = load(p, &a.plan)?;
    let key = a.key.as_deref().map(parse_selector).transpose()?;
    let mut sources = Vec::new();
    for entry in plan
        .syncs
        .iter()
        .filter(|e| a.sync.as_deref().is_none_or(|n| n == e.name))
    {
        if let Some(c) = plan.cluster(&entry.source) {
            if !sources.iter().any(|s: &&crate::plan::Cluster| s.name == c.name) {
                sources.push(c);
            }
        }
    }
    let tokens = open(&sources)?;
    // A handle from an earlier run names nothing on a source whose handles last one
    // session: refused before any login, as `plan` and `apply` refuse one.
    if let Some(m) = &key {
        for c in &sources {
            refuse_session_handle(&tokens, &c.name, m, "`--key`")?;
        }
    }
    log_in(&tokens, &sources)?;
    let sel = Selection {
        sync: a.sync.as_deref(),
        key,
        failed_only: a.failed,
    };
    // A hidden flag, not an environment variable (why: `NotifyArgs::test_claim_settle_ms`).
    let settle = a
        .test_claim_settle_ms
        .map_or(DEFAULT_CLAIM_SETTLE, Duration::from_millis);
    let limits = crate::limits::Limits::new(None, plan.options.parallelism);
    let store = crate::state::open(&plan.state, tokens.state_ids(), &tokens)?;
    match renotify(&plan, &tokens, store.as_ref(), &sel, settle, limits)? {
        Renotify::Refused(why) => {
            for w in &why {
                p.error_line(&format!("refused: {w}"));
            }
            p.error_line("notify refused: nothing was sent");
            Ok(ExitStatus::Cooldown)
        }
        Renotify::Done {
            records,
            skipped,
            warnings,
        } => {
            for s in &skipped {
                p.error_line(s);
            }
            if let Some(path) = &a.report {
                let mut report = Report::new("notify", &a.plan, started, &Diff::default(), Some(&[]));
                report.notifications = records.clone();
                write_atomic(path, &report)
                    .into_diagnostic()
                    .wrap_err_with(|| format!("writing the report to {}", path.display()))?;
            }
            print_notifications(p, &records, &warnings);
            if records.is_empty() {
                p.outln(if a.failed {
                    "Notify: no failed deliveries to re-send"
                } else {
                    "Notify: nothing to re-send"
                });
            }
            let failed = !warnings.is_empty() || records.iter().any(|r| r.status == DeliveryStatus::Failed);
            Ok(if failed {
                ExitStatus::Incomplete
            } else {
                ExitStatus::Success
            })
        }
    }
}
