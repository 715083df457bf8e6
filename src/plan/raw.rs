//! The plan file as written: serde types mirroring the YAML 1:1 (CONTRACT.md §1). They do
//! nothing but parse; [`super::validate`] turns them into the checked [`super::model`].

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;

/// Names of clusters and sync entries.
pub const NAME_PATTERN: &str = "^[a-z0-9][a-z0-9_-]*$";

/// The whole plan file. Validation deserializes it section by section (to report every
/// problem, not the first); this type is the single description of its shape and the
/// source of `schemas/plan.schema.json`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "hsm-sync plan", description = "A declarative plan for hsm-sync (version 1)")]
pub struct RawPlan {
    /// Plan format version; must be 1.
    #[schemars(range(min = 1, max = 1))]
    pub version: u32,
    /// The clusters (PKCS#11 tokens), by name (`[a-z0-9][a-z0-9_-]*`).
    #[schemars(extend("propertyNames" = { "pattern": NAME_PATTERN }))]
    pub clusters: BTreeMap<String, RawCluster>,
    /// Sync entries: which keys go from which source to which targets.
    #[serde(default)]
    pub sync: Vec<RawSync>,
    /// Run options.
    #[serde(default)]
    pub options: Option<RawOptions>,
    /// Where hsm-sync keeps lifecycle records, claims, journals and locks (CONTRACT.md §6).
    #[serde(default)]
    pub state: Option<RawStateStore>,
}

/// One cluster: a PKCS#11 module and a token on it.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    /// Path of the PKCS#11 library; `${VAR}` and `~` are expanded.
    pub module: String,
    /// `C_Initialize`'s pReserved string, for modules that need one (NSS softokn:
    /// `configdir='sql:DIR' certPrefix='' keyPrefix='' secmod='secmod.db' flags=`).
    #[serde(default)]
    pub module_args: Option<String>,
    /// `auto` (default: chosen by the token's manufacturer and model) or a profile name
    /// that `hsm-sync probe` prints.
    #[serde(default)]
    pub profile: Option<String>,
    /// Which token of the module.
    pub token: RawToken,
    /// How to log in.
    pub credentials: RawCredentials,
    /// The cluster this one was cloned from (required for a sync target).
    #[serde(default)]
    pub cloned_from: Option<String>,
    /// The shared wrapping key and an optional pinned lineage fingerprint.
    #[serde(default)]
    pub lineage: Option<RawLineage>,
}

/// Token selection: exactly one of `label`, `serial`, `slot`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawToken {
    /// The token label (`CK_TOKEN_INFO.label`).
    #[serde(default)]
    pub label: Option<String>,
    /// The token serial number.
    #[serde(default)]
    pub serial: Option<String>,
    /// The slot id.
    #[serde(default)]
    pub slot: Option<u64>,
}

/// What the run may sync. Both roles log in as the token's user (`CKU_USER`, the user
/// PIN): the role is hsm-sync's own policy, not a PKCS#11 user type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RawRole {
    /// Syncs only the keys the user owns: its private objects (`CKA_PRIVATE` true) and the
    /// public halves of its key pairs.
    CryptoUser,
    /// Syncs any key the plan selects, private or not (still logged in as `CKU_USER`).
    CryptoOfficer,
}

/// Credentials of a cluster.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawCredentials {
    /// `crypto-user` or `crypto-officer`.
    pub role: RawRole,
    /// The identity the plan says this login is; must match between a source and its
    /// targets. On SoftHSM and most tokens it is a label checked only against the other
    /// side (the PIN alone logs in); a profile whose PINs are `user:password` (CloudHSM)
    /// makes it part of the login (`user:PIN`).
    pub user: String,
    /// Where the PIN comes from: `{env: VAR}` or `{file: PATH}`, never the PIN itself.
    #[schemars(with = "RawPinSchema")]
    pub pin: serde_yaml::Value,
}

/// Schema of `credentials.pin` (parsed by hand so that an inline PIN gets its own diagnostic).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct RawPinSchema {
    /// Name of an environment variable that holds the PIN.
    #[serde(default)]
    pub env: Option<String>,
    /// Path of a file that holds the PIN (relative to the plan file).
    #[serde(default)]
    pub file: Option<String>,
}

/// The lineage block.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawLineage {
    /// Label of the shared wrapping key (default `hsm-sync-domain`).
    #[serde(default)]
    pub domain_key: Option<String>,
    /// The lineage fingerprint that `inventory` prints, pinned.
    #[serde(default)]
    pub fingerprint: Option<String>,
    /// The wire format of wrapped keys: `auto` (default: RFC 5649 where both sides of a
    /// pair make and read it, else RFC 3394), `rfc5649` or `rfc3394`.
    #[serde(default)]
    pub wrap: Option<RawWrap>,
}

/// `lineage.wrap`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RawWrap {
    /// RFC 5649 where both sides of a pair have it, else RFC 3394.
    Auto,
    /// AES key wrap with padding (RFC 5649) only.
    Rfc5649,
    /// AES key wrap (RFC 3394) only: keys whose length is a multiple of 8.
    Rfc3394,
}

/// One sync entry.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSync {
    /// Unique name; default `sync-<index>` (1-based).
    #[serde(default)]
    #[schemars(regex(pattern = NAME_PATTERN))]
    pub name: Option<String>,
    /// The source cluster.
    pub source: String,
    /// The target clusters.
    pub targets: Vec<String>,
    /// Key selectors.
    pub keys: Vec<RawSelector>,
    /// Associated resources told of key lifecycle events.
    #[serde(default)]
    pub notify: Vec<RawNotify>,
}

/// Desired state of the selected keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RawState {
    /// The key must exist on the targets.
    Present,
    /// The key must be deleted from the targets.
    Absent,
}

/// A key selector: exactly one of `id`, `label`, `handle`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSelector {
    /// `CKA_ID`, hex.
    #[serde(default)]
    #[schemars(regex(pattern = r"^([0-9a-fA-F]{2})+$"))]
    pub id: Option<String>,
    /// `CKA_LABEL`, exact or glob (`*`, `?`, `[...]`).
    #[serde(default)]
    pub label: Option<String>,
    /// Object handle on the source.
    #[serde(default)]
    pub handle: Option<u64>,
    /// `present` (default) or `absent`.
    #[serde(default)]
    pub state: Option<RawState>,
    /// Overrides the entry's targets for this selector.
    #[serde(default)]
    pub targets: Option<Vec<String>>,
    /// A present selector that matches no key is not a failure (CONTRACT.md §1).
    #[serde(default)]
    pub allow_empty: Option<bool>,
}

/// Lifecycle events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RawEvent {
    /// After a create or update.
    Synced,
    /// After a delete.
    Deleted,
}

/// An associated resource.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawNotify {
    /// Name of the resource.
    pub name: String,
    /// URL that receives the POST (http or https).
    #[schemars(regex(pattern = r"^https?://[^\s/?#@]+([/?#]\S*)?$"))]
    pub url: String,
    /// Which events (default: all).
    #[serde(default)]
    pub events: Option<Vec<RawEvent>>,
    /// Name of an environment variable holding a bearer token, sent as
    /// `Authorization: Bearer …` (never the token itself).
    #[serde(default)]
    pub bearer_env: Option<String>,
    /// Time limit of one delivery attempt (humantime: `500ms`, `10s`; default `10s`).
    #[serde(default)]
    pub timeout: Option<String>,
    /// Retries after a failed attempt, with exponential backoff (default 3, at most 10).
    #[serde(default)]
    pub retries: Option<u32>,
}

/// Run options.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawOptions {
    /// Worker threads (default: available CPUs).
    #[serde(default)]
    pub parallelism: Option<usize>,
    /// Cooldown of `notify` (humantime: `90s`, `1h`; default `1h`).
    #[serde(default)]
    pub notify_cooldown: Option<String>,
}

/// Where state lives (CONTRACT.md §6).
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawStateStore {
    /// `token` (default: data objects on each source token), `file` or `postgres`.
    #[serde(default)]
    #[schemars(extend("enum" = ["token", "file", "postgres"]))]
    pub backend: Option<String>,
    /// `file`: the state directory, relative to the plan file.
    #[serde(default)]
    pub path: Option<String>,
    /// `postgres`: the environment variable holding the libpq connection string.
    #[serde(default)]
    #[schemars(regex(pattern = "^[A-Za-z_][A-Za-z0-9_]*$"))]
    pub url_env: Option<String>,
    /// Never valid: read only to say that a connection string is not written in a plan.
    #[serde(default)]
    #[schemars(skip)]
    pub url: Option<serde_yaml::Value>,
}
