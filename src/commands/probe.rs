//! `hsm-sync probe PLAN CLUSTER [--format text|json]` (CONTRACT §2): what hsm-sync found
//! out about a token — its info, the profile chosen for it, every mechanism it lists, and
//! what each key-wrap mechanism really makes — so an operator bringing up a new token
//! sees why a pair gets the format it gets. Session objects only: no token object is
//! written.

use miette::IntoDiagnostic;
use serde::Serialize;

use crate::cli::{InventoryFormat, ProbeArgs};
use crate::connect::login;
use crate::error::Result;
use crate::exit::ExitStatus;
use crate::hsm::{WireFormat, WrapProbe};
use crate::output::Printer;

use super::error::CommandError;
use super::load;

#[derive(Serialize)]
struct Probe<'a> {
    cluster: &'a str,
    token: &'a str,
    serial: &'a str,
    manufacturer: &'a str,
    model: &'a str,
    slot: u64,
    profile: &'a str,
    profile_source: &'a str,
    /// Every mechanism id the token lists, hex.
    mechanisms: Vec<String>,
    wrap_mechanisms: &'a [WrapProbe],
    /// The formats this token makes and reads, with its mechanism for each.
    formats: Vec<(WireFormat, &'static str)>,
    /// What the profile says the token's templates and logins need.
    quirks: Vec<&'static str>,
    /// Whether its objects carry `CKA_UNIQUE_ID`.
    unique_id: bool,
    /// Whether it holds token data objects: not probed (that would write one); the
    /// state records find out (CONTRACT §6).
    data_objects: &'static str,
}

pub(super) fn run(p: &Printer, a: &ProbeArgs) -> Result<ExitStatus> {
    let plan = load(p, &a.plan)?;
    let cluster = super::cluster(&plan, &a.cluster, &a.plan, |cluster, plan, defined| {
        CommandError::ProbeUnknownCluster { cluster, plan, defined }
    })?;
    let tokens = login(&[cluster])?;
    let token = tokens.get(&cluster.name);
    let caps = token.capabilities()?;
    let profile = token.profile();
    let formats: Vec<(WireFormat, &'static str)> = caps
        .formats()
        .into_iter()
        .filter_map(|f| caps.mechanism_for(f).map(|m| (f, m.name)))
        .collect();
    let probe = Probe {
        cluster: &cluster.name,
        token: &token.facts.label,
        serial: &token.facts.serial,
        manufacturer: &token.facts.manufacturer,
        model: &token.facts.model,
        slot: token.facts.slot,
        profile: profile.name,
        profile_source: profile.source,
        mechanisms: caps.mechanisms.iter().map(|m| format!("{m:#x}")).collect(),
        wrap_mechanisms: &caps.wraps,
        formats,
        quirks: profile.quirks(),
        unique_id: caps.unique_id,
        data_objects: "not probed: probe writes no token object",
    };
    match a.format {
        InventoryFormat::Json => p.json(&probe).into_diagnostic()?,
        InventoryFormat::Text => {
            p.outln(&format!(
                "cluster `{}`: token `{}` (serial {}, slot {}), {} {}",
                probe.cluster, probe.token, probe.serial, probe.slot, probe.manufacturer, probe.model
            ));
            p.outln(&format!("profile: {} ({})", probe.profile, probe.profile_source));
            p.outln(&format!("mechanisms: {} listed", probe.mechanisms.len()));
            if caps.wraps.is_empty() {
                p.outln("key wrap: none of CKM_AES_KEY_WRAP_KWP, CKM_AES_KEY_WRAP_PAD, CKM_AES_KEY_WRAP is listed");
            }
            for w in &caps.wraps {
                p.outln(&format!(
                    "key wrap: {} ({:#x}) makes {}{}{}",
                    w.name,
                    w.id,
                    w.made.describe(),
                    if w.unwraps { "" } else { "; not listed for unwrap" },
                    if w.carries_eddsa { "; carries EdDSA keys" } else { "" }
                ));
            }
            match probe.quirks.as_slice() {
                [] => p.outln("template quirks: none known"),
                qs => p.outln(&format!("template quirks: {}", qs.join("; "))),
            }
            p.outln(&format!(
                "CKA_UNIQUE_ID: {}",
                if probe.unique_id { "yes" } else { "no" }
            ));
            p.outln(&format!("data objects: {}", probe.data_objects));
            match probe.formats.as_slice() {
                [] => p.outln("wire formats: none (hsm-sync cannot move keys to or from this token)"),
                fs => {
                    for (f, m) in fs {
                        p.outln(&format!("wire format {f}: {m}"));
                    }
                }
            }
        }
    }
    Ok(ExitStatus::Success)
}
