//! `hsm-sync validate PLAN [--online]`

use crate::cli::ValidateArgs;
use crate::connect::connect;
use crate::error::Result;
use crate::exit::ExitStatus;
use crate::output::Printer;

use super::load;

pub(super) fn run(p: &Printer, a: &ValidateArgs) -> Result<ExitStatus> {
    let plan = load(p, &a.plan)?;
    let selectors: usize = plan.syncs.iter().map(|s| s.selectors.len()).sum();
    p.outln(&format!(
        "{} is valid: {} cluster(s), {} sync entr{}, {selectors} key selector(s)",
        a.plan.display(),
        plan.clusters.len(),
        plan.syncs.len(),
        if plan.syncs.len() == 1 { "y" } else { "ies" }
    ));
    if a.online {
        let (_tokens, proofs) = connect(&plan)?;
        p.outln(&format!("logged in to {} cluster(s)", plan.clusters_in_scope().len()));
        for proof in proofs {
            p.outln(&format!(
                "lineage proven: {} → {} (lineage fingerprint {})",
                proof.source, proof.target, proof.fingerprint
            ));
            p.outln(&format!(
                "wire format: {} → {}: {} ({} {}, {} {})",
                proof.source,
                proof.target,
                proof.format,
                proof.source,
                proof.source_mechanism,
                proof.target,
                proof.target_mechanism
            ));
        }
    }
    Ok(ExitStatus::Success)
}
