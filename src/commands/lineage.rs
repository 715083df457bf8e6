//! `hsm-sync lineage create PLAN CLUSTER`: the domain key a lineage shares, made on a
//! token that has none. On clones, make it on the primary before cloning; the clones
//! restored from its backup then hold the same key (CONTRACT.md §2).

use crate::cli::{LineageArgs, LineageCommand};
use crate::connect::{lineage_fingerprint, login};
use crate::error::Result;
use crate::exit::ExitStatus;
use crate::output::Printer;

use super::error::CommandError;
use super::load;

pub(super) fn run(p: &Printer, a: &LineageArgs) -> Result<ExitStatus> {
    let LineageCommand::Create(c) = &a.action;
    let plan = load(p, &c.plan)?;
    let Some(cluster) = plan.cluster(&c.cluster) else {
        let names: Vec<&str> = plan.clusters.iter().map(|c| c.name.as_str()).collect();
        return Err(CommandError::LineageUnknownCluster {
            cluster: c.cluster.clone(),
            plan: c.plan.display().to_string(),
            defined: names.join(", "),
        }
        .into());
    };
    let tokens = login(&[cluster])?;
    let token = tokens.get(&cluster.name);
    let handle = token.create_domain_key()?;
    let fingerprint = lineage_fingerprint(cluster, &tokens)?;
    p.outln(&format!(
        "made domain key `{}` on `{}` (handle {handle}: AES-256, private, sensitive, never extractable)",
        token.domain_label(),
        cluster.name
    ));
    p.outln(&format!("lineage fingerprint {fingerprint}"));
    Ok(ExitStatus::Success)
}
