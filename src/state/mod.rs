//! Stage 6½: where hsm-sync remembers (CONTRACT.md §6, issue 15). One port,
//! [`StateStore`], and three backends that give the same answers:
//!
//! - `token` ([`token::TokenState`]): pages of records on each source token, claims as
//!   objects made at notify time, journals on the targets, locks as OS file locks;
//! - `file` ([`file::FileState`]): one directory, OS file locks, atomic writes;
//! - `postgres` ([`postgres::PgState`]): tables created on first use, locks held in the
//!   database (session-scoped: a killed run's go with its connection).
//!
//! What is kept: each key's last lifecycle event ([`KeyState`]), the claims that keep two
//! `notify` runs from both sending, each target's in-flight journal, the run locks, and
//! fingerprints cached by (token, `CKA_UNIQUE_ID`). Backends are addressed by cluster
//! name; each maps it to the token's identity ([`token_id`]) where it keys by token.

pub(crate) mod file;
pub(crate) mod flock;
pub(crate) mod postgres;
mod record;
pub(crate) mod token;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use miette::Diagnostic;
use sha2::{Digest, Sha256};

#[cfg(test)]
pub(crate) use record::CLAIM_TTL;
pub(crate) use record::{latest, parse_time, time_millis, Claim, KeyState};

use crate::domain::event::KeyInfo;
use crate::hsm::{HsmError, KeyStore};
use crate::plan::StateConfig;

/// Why the state could not be read or written.
#[derive(Debug, thiserror::Error, Diagnostic)]
pub(crate) enum StateError {
    /// A token operation of the token backend failed.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Hsm(#[from] HsmError),
    /// A file of the file backend.
    #[error("file state backend: {what} {}: {source}", path.display())]
    #[diagnostic(
        code(state::file),
        help("the plan's `state.path` must be a directory this user can write (it is made if missing)")
    )]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A record that does not parse (someone edited the state by hand?).
    #[error("{backend} state backend: {what} does not parse: {why}")]
    #[diagnostic(
        code(state::corrupt),
        help("nothing was changed; restore it from a backup or remove it (its keys' cooldowns then start afresh)")
    )]
    Corrupt {
        /// `file` or `postgres`.
        backend: &'static str,
        /// The file or table.
        what: String,
        /// The parse error.
        why: String,
    },
    /// The database refused or failed (the connection string is never in the message).
    #[error("postgres state backend ({url_env}): {what}: {why}")]
    #[diagnostic(
        code(state::postgres),
        help("check that the server is up and that ${url_env} holds a libpq URL whose user may create tables; nothing was written to any token")
    )]
    Db {
        /// The variable the URL came from.
        url_env: String,
        /// What was being done.
        what: &'static str,
        /// The server's or the client's message, with any secret removed.
        why: String,
    },
    /// A lock is held by another run, or cannot be taken.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Lock(#[from] flock::LockError),
}

/// The outcome of [`StateStore::claim`]: why keys are refused (empty: every key is this
/// run's), and each claimed key's record as read under the claim, by identity.
#[derive(Debug, Default)]
pub(crate) struct Claimed {
    /// One message per refused key; nothing may be sent when there is any.
    pub refused: Vec<String>,
    /// The records as they are now, by key identity.
    pub states: HashMap<String, KeyState>,
}

/// Locks a run holds until it drops them (or its process dies).
pub(crate) type Held = Box<dyn std::any::Any + Send>;

/// The rule a claim re-checks each key against under the claim (the cooldown): `Some`
/// with the message when the key may not be sent.
pub(crate) type Check<'a> = &'a dyn Fn(&KeyInfo, Option<&KeyState>) -> Option<String>;

/// Where lifecycle records, claims, journals, locks and cached fingerprints live.
/// `source`/`target`/`cluster` are the plan's cluster names.
pub(crate) trait StateStore: Sync {
    /// `token`, `file` or `postgres`.
    fn name(&self) -> &'static str;

    /// Every key's latest record on (or for) `source`, sorted by identity.
    fn read(&self, source: &str) -> Result<Vec<KeyState>, StateError>;

    /// Appends records (later ones replace earlier ones of the same key). On the token
    /// backend an apply adds O(1) objects, whatever the key count. Returns notes for the
    /// operator (a migration done, a compaction).
    fn append(&self, source: &str, records: &[KeyState]) -> Result<Vec<String>, StateError>;

    /// Claims `keys` for this run (`mine`), or refuses: a key another fresh claim holds, or
    /// that `check` refuses as the record is under the claim. `settle` is the wait of the
    /// token backend's protocol (the others claim in a transaction and do not wait).
    /// Always follow with [`Self::release`], whatever the outcome.
    fn claim(
        &self,
        source: &str,
        keys: &[KeyInfo],
        mine: &Claim,
        settle: Duration,
        check: Check<'_>,
    ) -> Result<Claimed, StateError>;

    /// Releases this run's claims on `keys` (those still ours).
    fn release(&self, source: &str, keys: &[KeyInfo], mine: &Claim) -> Result<(), StateError>;

    /// Locks every target for one writing run, or none: the first busy one is an error
    /// naming its holder, unless it frees within `wait`.
    fn lock(&self, targets: &[&str], command: &str, wait: Duration) -> Result<Held, StateError>;

    /// Records which identities this run is about to create on `target`.
    fn journal_write(&self, target: &str, entries: &[String]) -> Result<(), StateError>;

    /// The identities an interrupted run was creating on `target`.
    fn journal_read(&self, target: &str) -> Result<Vec<String>, StateError>;

    /// Removes `target`'s journal: the run ended.
    fn journal_clear(&self, target: &str) -> Result<(), StateError>;

    /// Fingerprints cached for `cluster`'s token under `scope` ([`cache_scope`]), by
    /// `CKA_UNIQUE_ID` (empty: none).
    fn cached_fingerprints(&self, cluster: &str, scope: &str) -> Result<HashMap<String, String>, StateError>;

    /// Caches fingerprints of `cluster`'s keys under `scope`, by `CKA_UNIQUE_ID` (a PKCS#11
    /// object's material never changes, so an entry never goes stale while the id exists).
    fn cache_fingerprints(&self, cluster: &str, scope: &str, entries: &[(String, String)]) -> Result<(), StateError>;
}

/// A token's identity as the state backends key it: manufacturer, model, serial and
/// label (the same token through any module path), hashed to 24 hex digits. The same
/// name as the lock files of earlier versions.
pub(crate) fn token_id(manufacturer: &str, model: &str, serial: &str, label: &str) -> String {
    let identity = format!("{manufacturer}\0{model}\0{serial}\0{label}");
    hex::encode(&Sha256::digest(identity.as_bytes())[..12])
}

/// What a cached fingerprint is valid for: the token, the wire format its fingerprints
/// are made in and the lineage (domain key) they are made under, hashed to 24 hex digits.
/// A new domain key or another format is another scope, never a stale entry.
pub(crate) fn cache_scope(token: &str, wire: &str, lineage: &str) -> String {
    hex::encode(&Sha256::digest(format!("{token}\0{wire}\0{lineage}").as_bytes())[..12])
}

/// Token identities by cluster name.
pub(crate) type TokenIds = HashMap<String, String>;

/// The plan's backend, opened: `ids` names each cluster's token, `tokens` reaches them
/// (the token backend). Nothing is written here; the postgres backend connects and
/// creates its tables on first use.
pub(crate) fn open<'a, S: KeyStore>(
    config: &StateConfig,
    ids: TokenIds,
    tokens: &'a S,
) -> Result<Box<dyn StateStore + 'a>, StateError> {
    Ok(match config {
        StateConfig::Token => Box::new(token::TokenState::new(tokens, ids)),
        StateConfig::File { path } => Box::new(file::FileState::new(path.clone(), ids)),
        StateConfig::Postgres { url_env } => Box::new(postgres::PgState::connect(url_env, ids)?),
    })
}

/// How long `lock` waits when the command sets no `--lock-timeout`: not at all.
pub(crate) const NO_WAIT: Duration = Duration::ZERO;

/// A cluster's token id, or the cluster's name where the backend was given none (unit
/// tests on the in-memory store).
pub(crate) fn id_of<'a>(ids: &'a TokenIds, cluster: &'a str) -> &'a str {
    ids.get(cluster).map(String::as_str).unwrap_or(cluster)
}
