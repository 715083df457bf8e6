//! `hsm-sync lineage create|import PLAN CLUSTER`: the domain key a lineage shares
//! (CONTRACT.md §2). `create` makes it on a token that has none: on clones, make it on the
//! primary before cloning, and the clones restored from its backup hold the same key.
//! `import` is the key ceremony for tokens of different makes, which cannot be clones: the
//! same components, XORed into the same key, imported on each (`crate::ceremony`).

use crate::ceremony::{self, Terminal};
use crate::cli::{LineageArgs, LineageCommand, LineageCreateArgs, LineageImportArgs};
use crate::connect::{lineage_fingerprint, login, Tokens};
use crate::domain::handle::Handle;
use crate::error::Result;
use crate::exit::ExitStatus;
use crate::output::Printer;
use crate::plan::{Cluster, Plan};

use super::error::CommandError;
use super::load;

pub(super) fn run(p: &Printer, a: &LineageArgs) -> Result<ExitStatus> {
    match &a.action {
        LineageCommand::Create(c) => create(p, c),
        LineageCommand::Import(c) => import(p, c),
    }
}

fn create(p: &Printer, c: &LineageCreateArgs) -> Result<ExitStatus> {
    let plan = load(p, &c.plan)?;
    let cluster = cluster(&plan, &c.cluster, &c.plan)?;
    let tokens = login(&[cluster])?;
    let token = tokens.get(&cluster.name);
    let handle = token.create_domain_key()?;
    done(p, "made", cluster, &tokens, handle)
}

fn import(p: &Printer, c: &LineageImportArgs) -> Result<ExitStatus> {
    let mut terminal = Terminal;
    // Everything that can be refused without a token is, before any login: the count,
    // then the files.
    ceremony::check_count(c.components, c.component_files.len(), &terminal)?;
    let plan = load(p, &c.plan)?;
    let cluster = cluster(&plan, &c.cluster, &c.plan)?;
    let mut components = ceremony::read_files(&c.component_files)?;
    let tokens = login(&[cluster])?;
    let token = tokens.get(&cluster.name);
    // Asked before anyone types: a token that has its key needs no ceremony.
    token.check_no_domain_key()?;
    components.extend(ceremony::read_typed(components.len(), c.components, &mut terminal)?);
    let key = ceremony::combine(&components)?;
    for (i, comp) in components.iter().enumerate() {
        p.outln(&format!(
            "component {} ({}): check value {}",
            i + 1,
            comp.from,
            comp.check_value()
        ));
    }
    let handle = token.import_domain_key(&key)?;
    drop(key);
    done(p, "imported", cluster, &tokens, handle)
}

/// Prints the key's handle and the lineage fingerprint it gives the token (`verb`: how
/// the key got there).
fn done(p: &Printer, verb: &str, cluster: &Cluster, tokens: &Tokens, handle: Handle) -> Result<ExitStatus> {
    let fingerprint = match lineage_fingerprint(cluster, tokens) {
        Ok(f) => f,
        // A key whose lineage is not the plan's pin is not the one the plan means: take
        // it away again, so a failed run leaves the token as it found it (exit 1).
        Err(e @ crate::hsm::HsmError::LineagePin { .. }) => {
            tokens.get(&cluster.name).session()?.destroy(handle)?;
            p.error_line(&format!(
                "removed the domain key just {verb} on `{}`: its lineage fingerprint is not the one the plan pins",
                cluster.name
            ));
            return Err(e.into());
        }
        Err(e) => return Err(e.into()),
    };
    p.outln(&format!(
        "{verb} domain key `{}` on `{}` (handle {handle}: AES-256, private, sensitive, never extractable)",
        tokens.get(&cluster.name).domain_label(),
        cluster.name
    ));
    p.outln(&format!("lineage fingerprint {fingerprint}"));
    Ok(ExitStatus::Success)
}

/// The cluster `name` of `plan`, or `lineage`'s refusal naming the ones there are.
fn cluster<'p>(plan: &'p Plan, name: &str, path: &std::path::Path) -> Result<&'p Cluster> {
    super::cluster(plan, name, path, |cluster, plan, defined| {
        CommandError::LineageUnknownCluster { cluster, plan, defined }
    })
}
