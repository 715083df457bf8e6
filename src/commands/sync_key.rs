//! `hsm-sync sync-key PLAN --source CLUSTER <key handle> <destination>`: CloudHSM's
//! `syncKey` — one key, named by its handle on the source, to one cluster named or
//! numbered (0-based position in `clusters`). The same login, lineage and fingerprint
//! checks as `apply`, by running `apply`'s pipeline on a one-selector plan.

use std::time::SystemTime;

use super::error::CommandError;
use crate::cli::SyncKeyArgs;
use crate::diff::Action;
use crate::domain::handle::Handle;
use crate::error::Result;
use crate::exit::ExitStatus;
use crate::output::Printer;
use crate::plan::{Cluster, DesiredState, KeyMatcher, Plan, Selector, SyncEntry};
use crate::report::Status;

use super::apply::{run_jobs, RunOptions};
use super::load;
use crate::inventory::Fingerprints;
use crate::limits::Limits;
use crate::pipeline::online_diff;

pub(super) fn run(p: &Printer, a: &SyncKeyArgs) -> Result<ExitStatus> {
    let started = SystemTime::now();
    let plan = load(p, &a.plan)?;
    let source = cluster(&plan, &a.source, "source")?;
    let dest = destination(&plan, &a.destination)?;
    if dest.name == source.name {
        return Err(CommandError::SameCluster(dest.name.clone()).into());
    }
    // The plan rule for sync entries, applied to this ad-hoc pair.
    let (s, d) = (&source.credentials, &dest.credentials);
    if s.role != d.role || s.user != d.user {
        return Err(CommandError::CredentialsDiffer {
            source_cluster: source.name.clone(),
            source_login: format!("{} `{}`", s.role, s.user),
            dest: dest.name.clone(),
            dest_login: format!("{} `{}`", d.role, d.user),
        }
        .into());
    }
    // The operator's number is a claim the source token answers for (no key: exit 1 below).
    let handle = Handle::claimed(a.handle);
    let one = Plan {
        syncs: vec![SyncEntry {
            name: "sync-key".into(),
            source: source.name.clone(),
            targets: vec![dest.name.clone()],
            selectors: vec![Selector {
                matcher: KeyMatcher::Handle(handle),
                state: DesiredState::Present,
                targets: vec![dest.name.clone()],
                allow_empty: false,
            }],
            notify: Vec::new(),
        }],
        ..plan.clone()
    };
    let limits = Limits::new(None, plan.options.parallelism);
    let online = online_diff(
        &one,
        None,
        Some(crate::pipeline::Writer {
            command: "sync-key",
            wait: a.lock_timeout.unwrap_or(crate::state::NO_WAIT),
        }),
        Fingerprints::Compared,
        limits,
        false,
    )?;
    // An unknown handle is an operator's typo, not a blocked key: exit 1, nothing written
    // (CONTRACT.md §2; issue 16 item 6).
    let held = online
        .inventories
        .get(&source.name)
        .is_some_and(|inv| inv.keys.iter().any(|k| k.handle == handle));
    if !held {
        return Err(CommandError::UnknownHandle {
            handle,
            cluster: source.name.clone(),
            plan: a.plan.display().to_string(),
        }
        .into());
    }
    let opts = RunOptions {
        command: "sync-key",
        plan_name: a.plan.clone(),
        limits,
        allow_destroy: false,
        progress_interval: std::time::Duration::from_secs(10),
        report: None,
        junit: None,
        summary: false,
    };
    let (report, status) = run_jobs(p, &one, &online, &opts, started)?;
    // What was copied, as CloudHSM's syncKey would say it; failures and blocked keys
    // were printed by the run.
    for job in report.jobs.iter().filter(|j| j.status == Status::Ok) {
        let what = match job.action {
            Action::Create => "copied",
            Action::Update => "updated",
            Action::Unchanged => "already in sync",
            _ => continue,
        };
        p.outln(&format!(
            "{what}: id={} label={:?} class={} from `{}` to `{}`",
            job.key.id,
            job.key.label,
            job.key
                .class
                .map(|c| crate::render::serde_plain(&c))
                .unwrap_or_default(),
            job.source,
            job.target
        ));
    }
    if status == ExitStatus::Success {
        p.outln("syncKey success");
    }
    Ok(status)
}

fn cluster<'p>(plan: &'p Plan, name: &str, what: &'static str) -> Result<&'p Cluster, CommandError> {
    plan.cluster(name).ok_or_else(|| CommandError::SyncKeyUnknownCluster {
        what,
        name: name.into(),
        defined: names(plan),
    })
}

/// A cluster name, or a 0-based position in `clusters` as CloudHSM numbers its clusters.
fn destination<'p>(plan: &'p Plan, dest: &str) -> Result<&'p Cluster, CommandError> {
    if let Some(c) = plan.cluster(dest) {
        return Ok(c);
    }
    match dest.parse::<usize>() {
        Ok(i) => plan.clusters.get(i).ok_or_else(|| CommandError::NoClusterAtPosition {
            index: i,
            last: plan.clusters.len().saturating_sub(1),
            defined: names(plan),
        }),
        Err(_) => cluster(plan, dest, "destination"),
    }
}

fn names(plan: &Plan) -> String {
    plan.clusters
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{i}: {}", c.name))
        .collect::<Vec<_>>()
        .join(", ")
}
