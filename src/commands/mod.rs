//! One file per subcommand, each wiring the stages together. Commands never name
//! `cryptoki`, print only through the [`Printer`], and return an [`ExitStatus`] or an
//! [`crate::error::Error`] that the edge renders and maps to its exit code.

mod apply;
mod demo;
mod inventory;
mod notify;
mod plan;
mod schema;
mod sync_key;
mod validate;

use std::path::Path;

use crate::cli::{Cli, Command};
use crate::connect::{log_in, open, prove_all, Tokens};
use crate::diff::{diff, Diff};
use crate::domain::shard::Shard;
use crate::error::Result;
use crate::exit::ExitStatus;
use crate::inventory::{read_all, Fingerprints, Inventories};
use crate::output::Printer;
use crate::plan::Plan;
use crate::report::ms_since;
use crate::saved;

/// Runs the parsed command line; everything it prints goes through `p`.
pub fn dispatch(cli: &Cli, p: &Printer) -> Result<ExitStatus> {
    match &cli.command {
        Command::Validate(a) => validate::run(p, a),
        Command::Plan(a) => plan::run(p, a),
        Command::Apply(a) => apply::run(p, a),
        Command::Inventory(a) => inventory::run(p, a),
        Command::SyncKey(a) => sync_key::run(p, a),
        Command::Demo(a) => demo::run(p, a),
        Command::Notify(a) => notify::run(p, a),
        Command::Schema(a) => schema::run(p, a),
    }
}

/// Loads a plan, printing its warnings.
pub(crate) fn load(p: &Printer, path: &Path) -> miette::Result<Plan> {
    warn(p, crate::plan::load(path)?)
}

/// Validates the text of a plan saved earlier, printing its warnings.
pub(crate) fn load_text(p: &Printer, path: &Path, text: String) -> miette::Result<Plan> {
    warn(p, crate::plan::load_text(path, text)?)
}

fn warn(p: &Printer, loaded: crate::plan::Loaded) -> miette::Result<Plan> {
    if let Some(w) = &loaded.warnings {
        p.diagnostic(w);
    }
    Ok(loaded.plan)
}

/// What the online stages found: the logged-in tokens, their inventories and the diff.
pub(crate) struct Online {
    /// Logged-in tokens of every cluster in scope.
    pub tokens: Tokens,
    /// Their inventories.
    pub inventories: Inventories,
    /// The diff of the plan against them.
    pub diff: Diff,
    /// The target tokens' locks, for commands that write (held until this drops).
    pub _lock: Option<crate::lock::RunLock>,
    /// How long connecting, reading and diffing took.
    pub timings: crate::report::Timings,
}

impl Online {
    /// The state of every token in scope, for saved plans and their staleness check.
    pub fn token_states(&self, plan: &Plan, shard: Option<Shard>) -> Vec<saved::TokenState> {
        saved::token_states(plan, &self.inventories, shard, |c| {
            let f = &self.tokens.get(c).facts;
            (f.label.clone(), f.serial.clone())
        })
    }
}

/// The online part shared by `plan` and `apply`: log in, prove lineage, read the
/// inventories in scope, diff.
/// With a shard, only that shard's jobs. A command that writes names itself in `writer`
/// and gets every target token locked before its inventory is read. `fingerprints` says
/// whether keys no target holds are fingerprinted now ([`Fingerprints::All`]: the diff
/// shows them) or by their copy jobs.
pub(crate) fn online_diff(
    plan: &Plan,
    shard: Option<Shard>,
    writer: Option<&str>,
    fingerprints: Fingerprints,
) -> miette::Result<Online> {
    let mut timings = crate::report::Timings::default();
    let t = std::time::Instant::now();
    // A writer locks its targets before logging in: login's search of the keys is then
    // the inventory's own (no other run changes them in between), and a busy cluster
    // costs no login.
    let clusters = plan.clusters_in_scope();
    let tokens = open(&clusters)?;
    let lock = match writer {
        Some(command) => Some(lock_targets(plan, &tokens, command)?),
        None => None,
    };
    log_in(&tokens, &clusters)?;
    prove_all(plan, &tokens)?;
    timings.connect_ms = ms_since(t);
    let names: Vec<&str> = clusters.iter().map(|c| c.name.as_str()).collect();
    // As many sessions per token as the plan's workers (--jobs is an apply option; the
    // inventory comes before it).
    let workers = crate::limits::Limits::new(None, plan).jobs();
    let t = std::time::Instant::now();
    let written: Vec<&str> = plan.syncs.iter().flat_map(|s| s.all_targets()).collect();
    let source_only: Vec<&str> = names.iter().copied().filter(|n| !written.contains(n)).collect();
    let inventories = read_all(&tokens, &names, &source_only, fingerprints, workers)?;
    timings.inventory_ms = ms_since(t);
    let t = std::time::Instant::now();
    let mut diff = diff(plan, &inventories);
    if let Some(s) = shard {
        diff = diff.shard(s);
    }
    timings.diff_ms = ms_since(t);
    Ok(Online {
        tokens,
        inventories,
        diff,
        _lock: lock,
        timings,
    })
}

/// Locks every target token of the plan (sorted, so two runs meet in the same order).
fn lock_targets(plan: &Plan, tokens: &Tokens, command: &str) -> Result<crate::lock::RunLock, crate::lock::LockError> {
    let mut names: Vec<&str> = plan.syncs.iter().flat_map(|s| s.all_targets()).collect();
    names.sort_unstable();
    names.dedup();
    let targets: Vec<crate::lock::LockTarget> = names
        .iter()
        .filter_map(|n| plan.cluster(n))
        .map(|c| {
            // The token itself, however it is reached (a pass-through module is the same token).
            let f = &tokens.get(&c.name).facts;
            crate::lock::LockTarget {
                cluster: &c.name,
                identity: format!("{}\0{}\0{}\0{}", f.manufacturer, f.model, f.serial, f.label),
            }
        })
        .collect();
    crate::lock::acquire(&targets, command)
}
