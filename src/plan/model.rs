//! The validated plan: built only by [`super::validate`], so every value here has passed
//! the rules of CONTRACT.md §1.

use std::path::PathBuf;
use std::time::Duration;

use std::sync::OnceLock;

use globset::{Glob, GlobMatcher};

use super::source::PlanSource;
use crate::credentials::PinSource;
/// The lifecycle events a resource wants are the domain's (re-exported where the plan
/// names them).
pub use crate::domain::event::Event;
use crate::domain::handle::Handle;

/// Default label of the shared wrapping ("domain") key.
pub const DEFAULT_DOMAIN_KEY: &str = "hsm-sync-domain";

/// A checked plan.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The text and locator, for diagnostics found after validation.
    pub source: PlanSource,
    /// Clusters in file order (the 0-based position is a `sync-key` destination).
    pub clusters: Vec<Cluster>,
    /// Sync entries in file order.
    pub syncs: Vec<SyncEntry>,
    /// Run options.
    pub options: Options,
    /// Where state lives.
    pub state: StateConfig,
}

impl Plan {
    /// The cluster of a name (names were checked to exist during validation).
    pub fn cluster(&self, name: &str) -> Option<&Cluster> {
        self.clusters.iter().find(|c| c.name == name)
    }

    /// The clusters any sync entry reads from or writes to, sources first, each once.
    pub fn clusters_in_scope(&self) -> Vec<&Cluster> {
        let mut names: Vec<&str> = Vec::new();
        for s in &self.syncs {
            if !names.contains(&s.source.as_str()) {
                names.push(&s.source);
            }
        }
        for s in &self.syncs {
            for t in s.all_targets() {
                if !names.contains(&t) {
                    names.push(t);
                }
            }
        }
        names.iter().filter_map(|n| self.cluster(n)).collect()
    }
}

/// The login role (both are `CKU_USER` on PKCS#11; the role decides which keys may move).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Syncs only keys it owns: private objects and the public halves of its pairs.
    CryptoUser,
    /// Syncs any key the plan selects.
    CryptoOfficer,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::CryptoUser => "crypto-user",
            Role::CryptoOfficer => "crypto-officer",
        })
    }
}

pub use crate::domain::token::TokenRef;

/// Who logs in, and with which PIN.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// The role.
    pub role: Role,
    /// The identity (must match between a source and its targets).
    pub user: String,
    /// Where the PIN is read from at login time.
    pub pin: PinSource,
}

/// One cluster.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// Its name in the plan.
    pub name: String,
    /// The PKCS#11 module path, expanded.
    pub module: PathBuf,
    /// `C_Initialize`'s pReserved string.
    pub module_args: Option<String>,
    /// A profile name the plan chose; `None` is `auto`.
    pub profile: Option<String>,
    /// The wire format `lineage.wrap` pins; `None` is `auto`.
    pub wrap: Option<crate::domain::wire::WireFormat>,
    /// The token.
    pub token: TokenRef,
    /// Login.
    pub credentials: Credentials,
    /// The cluster this one was cloned from.
    pub cloned_from: Option<String>,
    /// Label of the domain (wrapping) key.
    pub domain_key: String,
    /// A pinned lineage fingerprint.
    pub fingerprint: Option<String>,
    /// What this machine lacks to reach the cluster (an unset `${VAR}`, a missing module or
    /// PIN file): warnings offline, where a lint job has no secrets, and errors online.
    pub unresolved: Vec<String>,
}

/// A `CKA_LABEL` glob, checked at validation and compiled into a matcher on first use: a
/// plan may hold thousands of globs, and building every automaton up front cost more than
/// reading the whole plan (see `benches/plan_load.rs`).
#[derive(Debug, Clone)]
pub struct LabelGlob {
    glob: Glob,
    matcher: OnceLock<GlobMatcher>,
}

impl LabelGlob {
    /// Wraps a parsed glob.
    pub fn new(glob: Glob) -> Self {
        LabelGlob {
            glob,
            matcher: OnceLock::new(),
        }
    }

    /// Parses a glob as the plan does (`*`, `?`, `[...]`; `/` is an ordinary character),
    /// e.g. for a `label:GLOB` given on the command line.
    pub fn parse(pattern: &str) -> Result<Self, globset::Error> {
        Ok(Self::new(
            globset::GlobBuilder::new(pattern).literal_separator(false).build()?,
        ))
    }

    /// Whether `label` matches the glob.
    pub fn is_match(&self, label: &str) -> bool {
        self.matcher.get_or_init(|| self.glob.compile_matcher()).is_match(label)
    }
}

/// Which keys a selector picks.
#[derive(Debug, Clone)]
pub enum KeyMatcher {
    /// `CKA_ID` bytes.
    Id(Vec<u8>),
    /// `CKA_LABEL`, exactly.
    Label(String),
    /// `CKA_LABEL`, by glob.
    LabelGlob(String, LabelGlob),
    /// Object handle on the source: the operator's claim, which the source token checks
    /// (a number that names nothing there selects nothing).
    Handle(Handle),
}

/// One selector value, as a plan's `keys` entry or `notify --key` writes it.
#[derive(Debug, Clone, Copy)]
pub enum SelectorValue<'a> {
    /// `id`: `CKA_ID` in hex.
    Id(&'a str),
    /// `label`: exact, or a glob when it holds `*`, `?` or `[`.
    Label(&'a str),
    /// `handle`: an object handle on the source, the number as written (it becomes a
    /// [`Handle`] claim in [`KeyMatcher::from_value`], the one place it does).
    Handle(u64),
}

/// Why a selector value selects nothing; each caller words it for its own input.
#[derive(Debug)]
pub enum SelectorError {
    /// An empty `id`.
    EmptyId,
    /// An `id` that is not hex.
    NotHex(hex::FromHexError),
    /// An empty `label`.
    EmptyLabel,
    /// A label glob that does not parse.
    BadGlob(globset::Error),
}

impl KeyMatcher {
    /// The matcher of one selector value, by the plan's rules (CONTRACT.md §1): an id is
    /// non-empty hex, a label holding `*`, `?` or `[` is a glob, a label is never empty.
    /// The plan's validation and `notify --key` both build their matchers here.
    pub fn from_value(value: SelectorValue<'_>) -> Result<KeyMatcher, SelectorError> {
        match value {
            SelectorValue::Id(id) => match hex::decode(id) {
                Ok(b) if !b.is_empty() => Ok(KeyMatcher::Id(b)),
                Ok(_) => Err(SelectorError::EmptyId),
                Err(e) => Err(SelectorError::NotHex(e)),
            },
            SelectorValue::Label(label) if label.contains(['*', '?', '[']) => LabelGlob::parse(label)
                .map(|g| KeyMatcher::LabelGlob(label.into(), g))
                .map_err(SelectorError::BadGlob),
            SelectorValue::Label("") => Err(SelectorError::EmptyLabel),
            SelectorValue::Label(label) => Ok(KeyMatcher::Label(label.into())),
            SelectorValue::Handle(h) => Ok(KeyMatcher::Handle(Handle::claimed(h))),
        }
    }

    /// Whether two matchers name the same key or glob as the plan writes it (same kind,
    /// same value): the test of the same-key-two-states rule (CONTRACT.md §1).
    pub fn same_as(&self, other: &KeyMatcher) -> bool {
        match (self, other) {
            (KeyMatcher::Id(a), KeyMatcher::Id(b)) => a == b,
            (KeyMatcher::Label(a), KeyMatcher::Label(b)) => a == b,
            (KeyMatcher::LabelGlob(a, _), KeyMatcher::LabelGlob(b, _)) => a == b,
            (KeyMatcher::Handle(a), KeyMatcher::Handle(b)) => a == b,
            _ => false,
        }
    }

    /// `id:HEX`, `label:GLOB` or `handle:N`, as on the command line.
    pub fn describe(&self) -> String {
        match self {
            KeyMatcher::Id(id) => format!("id:{}", hex::encode(id)),
            KeyMatcher::Label(l) | KeyMatcher::LabelGlob(l, _) => format!("label:{l}"),
            KeyMatcher::Handle(h) => format!("handle:{h}"),
        }
    }
}

/// Desired state of the selected keys on the targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DesiredState {
    /// Must exist.
    Present,
    /// Must be deleted.
    Absent,
}

impl DesiredState {
    /// `present` or `absent`, as the plan writes it.
    pub fn name(self) -> &'static str {
        match self {
            DesiredState::Present => "present",
            DesiredState::Absent => "absent",
        }
    }
}

/// One key selector of a sync entry.
#[derive(Debug, Clone)]
pub struct Selector {
    /// What it matches.
    pub matcher: KeyMatcher,
    /// Present or absent.
    pub state: DesiredState,
    /// Its targets: the selector's own override, else the entry's.
    pub targets: Vec<String>,
    /// `allow_empty: true`: matching no key on the source is not a failure.
    pub allow_empty: bool,
}

/// An associated resource of a sync entry's keys.
#[derive(Debug, Clone)]
pub struct NotifyTarget {
    /// Its name.
    pub name: String,
    /// The URL that receives the POST.
    pub url: String,
    /// The events it wants.
    pub events: Vec<Event>,
    /// The environment variable holding its bearer token, if it wants one.
    pub bearer_env: Option<String>,
    /// Time limit of one delivery attempt.
    pub timeout: Duration,
    /// Retries after a failed attempt.
    pub retries: u32,
}

/// One sync entry.
#[derive(Debug, Clone)]
pub struct SyncEntry {
    /// Unique name.
    pub name: String,
    /// Source cluster name.
    pub source: String,
    /// The entry's targets.
    pub targets: Vec<String>,
    /// Key selectors.
    pub selectors: Vec<Selector>,
    /// Associated resources.
    pub notify: Vec<NotifyTarget>,
}

impl SyncEntry {
    /// Every target named by the entry or one of its selectors, each once, in order.
    pub fn all_targets(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for t in self
            .targets
            .iter()
            .chain(self.selectors.iter().flat_map(|s| s.targets.iter()))
        {
            if !out.contains(&t.as_str()) {
                out.push(t);
            }
        }
        out
    }
}

/// Run options.
#[derive(Debug, Clone)]
pub struct Options {
    /// Worker threads, if the plan fixes them.
    pub parallelism: Option<usize>,
    /// Cooldown of `notify`.
    pub notify_cooldown: Duration,
}

/// Where hsm-sync keeps what outlives a run (CONTRACT.md §6).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum StateConfig {
    /// Data objects on each source token (targets hold their in-flight journal).
    #[default]
    Token,
    /// A directory, locked with OS file locks.
    File {
        /// The directory (resolved against the plan file's directory).
        path: PathBuf,
    },
    /// A PostgreSQL database.
    Postgres {
        /// The environment variable holding the connection string.
        url_env: String,
    },
}

impl StateConfig {
    /// `token`, `file` or `postgres`: the backend's name in the plan and in messages.
    pub fn name(&self) -> &'static str {
        match self {
            StateConfig::Token => "token",
            StateConfig::File { .. } => "file",
            StateConfig::Postgres { .. } => "postgres",
        }
    }
}
