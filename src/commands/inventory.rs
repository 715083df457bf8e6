//! `hsm-sync inventory PLAN CLUSTER [--format text|json]`: the keys of one cluster, as
//! CloudHSM's `findAllKeys` lists them, plus the lineage fingerprint to pin in the plan.

use miette::IntoDiagnostic;
use serde::Serialize;

use super::error::CommandError;
use crate::cli::{InventoryArgs, InventoryFormat};
use crate::connect::{lineage_fingerprint, login};
use crate::domain::handle::Handle;
use crate::domain::key::{KeyClass, KeyFlags, KeyType};
use crate::error::Result;
use crate::exit::ExitStatus;
use crate::output::Printer;

use super::load;

#[derive(Serialize)]
struct Listing {
    cluster: String,
    token: String,
    serial: String,
    slot: u64,
    lineage_fingerprint: String,
    /// The format the fingerprints digest, and this token's mechanism for it.
    wire_format: crate::domain::wire::WireFormat,
    mechanism: &'static str,
    /// False where the token's profile says handles last one session (CloudHSM SDK5):
    /// the listed handles are this run's only.
    handles_stable: bool,
    keys: Vec<Entry>,
}

#[derive(Serialize)]
struct Entry {
    handle: Handle,
    class: KeyClass,
    key_type: KeyType,
    id: String,
    label: String,
    flags: KeyFlags,
    fingerprint: Option<String>,
}

pub(super) fn run(p: &Printer, a: &InventoryArgs) -> Result<ExitStatus> {
    let plan = load(p, &a.plan)?;
    let cluster = super::cluster(&plan, &a.cluster, &a.plan, |cluster, plan, defined| {
        CommandError::InventoryUnknownCluster { cluster, plan, defined }
    })?;
    let tokens = login(&[cluster])?;
    let token = tokens.get(&cluster.name);
    // Fingerprints digest the wire format: the one `lineage.wrap` pins, else this token's
    // preferred. `plan` negotiates per pair, so on a fleet whose pairs fell back to RFC
    // 3394 without a pin the two can differ: the listing says which it used.
    if let Some(format) = cluster.wrap {
        let caps = token.capabilities()?;
        match caps.mechanism_for(format) {
            Some(m) => token.use_wrap(m),
            None => {
                return Err(crate::hsm::HsmError::NoWrapMechanism {
                    cluster: cluster.name.clone(),
                    found: format!("`lineage.wrap` pins {format}, which it does not make"),
                }
                .into())
            }
        }
    }
    let wire = token.wrap_mechanism()?;
    let lineage = crate::stage::timed("lineage", || lineage_fingerprint(cluster, &tokens))?;
    let keys = crate::stage::timed("inventory", || token.session()?.list_keys())?;
    let listing = Listing {
        cluster: cluster.name.clone(),
        token: token.facts.label.clone(),
        serial: token.facts.serial.clone(),
        slot: token.facts.slot,
        lineage_fingerprint: lineage,
        wire_format: wire.format,
        mechanism: wire.name,
        handles_stable: !token.profile().handles_per_session,
        keys: keys
            .into_iter()
            .map(|k| Entry {
                handle: k.handle,
                class: k.class,
                key_type: k.key_type,
                id: hex::encode(&k.id),
                label: k.label.into(),
                flags: k.flags,
                fingerprint: k.fingerprint.known().map(String::from),
            })
            .collect(),
    };
    match a.format {
        InventoryFormat::Json => p.json(&listing).into_diagnostic()?,
        InventoryFormat::Text => {
            p.outln(&format!(
                "cluster {} (token `{}`), lineage fingerprint {}",
                listing.cluster, listing.token, listing.lineage_fingerprint
            ));
            p.outln(&format!(
                "{:>8}  {:<11} {:<15} {:<16} {:<16} {:<24} flags",
                "handle", "class", "type", "id", "fingerprint", "label"
            ));
            for k in &listing.keys {
                p.outln(&format!(
                    "{:>8}  {:<11} {:<15} {:<16} {:<16} {:<24} {}",
                    k.handle,
                    crate::render::serde_plain(&k.class),
                    crate::render::serde_plain(&k.key_type),
                    k.id,
                    k.fingerprint.as_deref().unwrap_or("-"),
                    k.label,
                    k.flags
                ));
            }
            p.outln(&format!(
                "{} key(s); fingerprints in {} ({})",
                listing.keys.len(),
                listing.wire_format,
                listing.mechanism
            ));
            if !listing.handles_stable {
                p.outln(&format!(
                    "handles are this session's only ({}): select keys by id or label",
                    token.profile().name
                ));
            }
        }
    }
    Ok(ExitStatus::Success)
}
