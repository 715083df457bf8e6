//! One file per subcommand, each wiring the stages together. Commands never name
//! `cryptoki`; they return an [`ExitStatus`] or an error that the edge renders.

mod apply;
mod demo;
mod inventory;
mod notify;
mod plan;
mod schema;
mod validate;

use std::path::Path;

use miette::Diagnostic;

use crate::cli::{Cli, Command, DiagnosticsFormat};
use crate::connect::{connect, Tokens};
use crate::diff::{diff, Diff};
use crate::exit::ExitStatus;
use crate::inventory::read_all;
use crate::plan::Plan;

/// Runs the parsed command line.
pub fn dispatch(cli: &Cli) -> miette::Result<ExitStatus> {
    let ui = Ui {
        diagnostics: cli.diagnostics,
    };
    match &cli.command {
        Command::Validate(a) => validate::run(&ui, a),
        Command::Plan(a) => plan::run(&ui, a),
        Command::Apply(a) => apply::run(&ui, a),
        Command::Inventory(a) => inventory::run(&ui, a),
        Command::Demo(a) => demo::run(&ui, a),
        Command::Notify(a) => notify::run(&ui, a),
        Command::Schema(a) => schema::run(a),
    }
}

/// How diagnostics reach the operator.
pub struct Ui {
    /// Human or JSON.
    pub diagnostics: DiagnosticsFormat,
}

impl Ui {
    /// Prints a diagnostic (an error or a warning) on stderr.
    pub fn emit(&self, d: &dyn Diagnostic) {
        eprintln!("{}", crate::render_diagnostic(d, self.diagnostics));
    }

    /// Loads a plan, printing its warnings.
    pub fn load(&self, path: &Path) -> miette::Result<Plan> {
        let loaded = crate::plan::load(path)?;
        if let Some(w) = &loaded.warnings {
            self.emit(w);
        }
        Ok(loaded.plan)
    }
}

/// The online part shared by `plan` and `apply`: log in, prove lineage, read the
/// inventories in scope, diff.
pub(crate) fn online_diff(plan: &Plan) -> miette::Result<(Tokens, Diff)> {
    let (tokens, _proofs) = connect(plan)?;
    let names: Vec<&str> = plan.clusters_in_scope().iter().map(|c| c.name.as_str()).collect();
    let inv = read_all(&tokens, &names)?;
    Ok((tokens, diff(plan, &inv)))
}
