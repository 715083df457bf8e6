//! `hsm-sync validate PLAN [--online]`

use crate::cli::ValidateArgs;
use crate::connect::connect;
use crate::error::Result;
use crate::exit::ExitStatus;
use crate::output::Printer;

use super::error::CommandError;
use super::load;

/// The plan's state backend, online: tokens that must hold data objects do (by their
/// profile: writing one to find out is not `validate`'s to do), a database answers.
fn check_state(p: &Printer, plan: &crate::plan::Plan, tokens: &crate::connect::Tokens) -> Result<()> {
    match &plan.state {
        crate::plan::StateConfig::Token => {
            let refusing: Vec<(&str, &str)> = plan
                .clusters_in_scope()
                .iter()
                .map(|c| (c.name.as_str(), tokens.get(&c.name).profile()))
                .filter(|(_, prof)| prof.no_data_objects)
                .map(|(n, prof)| (n, prof.name))
                .collect();
            if !refusing.is_empty() {
                let names: Vec<String> = refusing.iter().map(|(n, _)| format!("`{n}`")).collect();
                let mut profiles: Vec<&str> = refusing.iter().map(|(_, p)| *p).collect();
                profiles.dedup();
                return Err(CommandError::NoDataObjects {
                    clusters: names.join(", "),
                    profiles: profiles.join(", "),
                }
                .into());
            }
            p.outln("state: token (records on each source token, journals on each target)");
        }
        crate::plan::StateConfig::File { path } => {
            p.outln(&format!("state: file ({})", path.display()));
        }
        crate::plan::StateConfig::Postgres { url_env } => {
            // Connecting proves the server answers and the URL's role gets in.
            crate::state::open(&plan.state, tokens.state_ids(), tokens)?;
            p.outln(&format!("state: postgres (${url_env}), connected"));
        }
    }
    Ok(())
}

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
        let (tokens, proofs) = connect(&plan)?;
        p.outln(&format!("logged in to {} cluster(s)", plan.clusters_in_scope().len()));
        check_state(p, &plan, &tokens)?;
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
