//! One file per subcommand, each wiring the stages together. Commands never name
//! `cryptoki`, print only through the [`Printer`], and return an [`ExitStatus`] or an
//! [`crate::error::Error`] that the edge renders and maps to its exit code.

mod apply;
mod completions;
mod demo;
mod error;
mod inventory;
mod lineage;
mod man;
mod notify;
mod plan;
mod probe;
mod schema;
mod sync_key;
mod validate;

use std::path::Path;

use crate::cli::{Cli, Command};
use crate::error::Result;
use crate::exit::ExitStatus;
use crate::output::Printer;
use crate::plan::Plan;

/// Runs the parsed command line; everything it prints goes through `p`.
pub(crate) fn dispatch(cli: &Cli, p: &Printer) -> Result<ExitStatus> {
    match &cli.command {
        Command::Validate(a) => validate::run(p, a),
        Command::Plan(a) => plan::run(p, a),
        Command::Apply(a) => apply::run(p, a),
        Command::Inventory(a) => inventory::run(p, a),
        Command::SyncKey(a) => sync_key::run(p, a),
        Command::Demo(a) => demo::run(p, a),
        Command::Notify(a) => notify::run(p, a),
        Command::Schema(a) => schema::run(p, a),
        Command::Lineage(a) => lineage::run(p, a),
        Command::Probe(a) => probe::run(p, a),
        Command::Completions(a) => completions::run(p, a),
        Command::Man => man::run(p),
    }
}

/// Loads a plan, printing its warnings.
/// The cluster `name` of `plan`, or the refusal `unknown` builds from the name, the plan
/// file and the clusters there are (each command keeps its own diagnostic code).
pub(crate) fn cluster<'p>(
    plan: &'p Plan,
    name: &str,
    path: &Path,
    unknown: fn(String, String, String) -> error::CommandError,
) -> Result<&'p crate::plan::Cluster> {
    plan.cluster(name).ok_or_else(|| {
        let names: Vec<&str> = plan.clusters.iter().map(|c| c.name.as_str()).collect();
        unknown(name.to_string(), path.display().to_string(), names.join(", ")).into()
    })
}

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
