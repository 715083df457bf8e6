//! `hsm-sync validate PLAN [--online]`

use crate::cli::ValidateArgs;
use crate::connect::connect;
use crate::exit::ExitStatus;

use super::Ui;

pub(super) fn run(ui: &Ui, a: &ValidateArgs) -> miette::Result<ExitStatus> {
    let plan = ui.load(&a.plan)?;
    let selectors: usize = plan.syncs.iter().map(|s| s.selectors.len()).sum();
    println!(
        "{} is valid: {} cluster(s), {} sync entr{}, {selectors} key selector(s)",
        a.plan.display(),
        plan.clusters.len(),
        plan.syncs.len(),
        if plan.syncs.len() == 1 { "y" } else { "ies" }
    );
    if a.online {
        let (_tokens, proofs) = connect(&plan)?;
        println!("logged in to {} cluster(s)", plan.clusters_in_scope().len());
        for p in proofs {
            println!(
                "lineage proven: {} → {} (lineage fingerprint {})",
                p.source, p.target, p.fingerprint
            );
        }
    }
    Ok(ExitStatus::Success)
}
