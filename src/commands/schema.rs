//! `hsm-sync schema plan|report|saved-plan`: the JSON Schemas, identical to `schemas/*.json`.

use miette::IntoDiagnostic;

use crate::cli::{SchemaArgs, SchemaKind};
use crate::error::Result;
use crate::exit::ExitStatus;
use crate::output::Printer;

/// The schema text of a kind, as committed under `schemas/`.
pub(super) fn schema_text(kind: SchemaKind) -> Result<String, serde_json::Error> {
    let schema = match kind {
        SchemaKind::Plan => schemars::schema_for!(crate::plan::raw::RawPlan),
        SchemaKind::Report => crate::report::schema(),
        SchemaKind::SavedPlan => crate::saved::schema(),
    };
    Ok(serde_json::to_string_pretty(&schema)? + "\n")
}

pub(super) fn run(p: &Printer, a: &SchemaArgs) -> Result<ExitStatus> {
    p.out(&schema_text(a.kind).into_diagnostic()?);
    Ok(ExitStatus::Success)
}
