//! Errors of the token layer. Every variant names the cluster; PKCS#11 failures keep the
//! function and the `CKR_*` value so operators can look them up.

use std::path::PathBuf;

use miette::Diagnostic;

/// A token-layer failure.
#[derive(Debug, thiserror::Error, Diagnostic)]
pub enum HsmError {
    /// The module file cannot be loaded.
    #[error("cluster `{cluster}`: cannot load PKCS#11 module {}: {detail}", module.display())]
    #[diagnostic(code(hsm::module), help("{hint}"))]
    Module {
        /// The cluster.
        cluster: String,
        /// The module path.
        module: PathBuf,
        /// What the loader said.
        detail: String,
        /// What to do: the package for SoftHSM's path, the vendor's library otherwise.
        hint: String,
    },
    /// No token matches the plan's token reference.
    #[error("cluster `{cluster}`: no token with {wanted} in {}", module.display())]
    #[diagnostic(code(hsm::token_not_found), help("tokens present: {present}"))]
    TokenNotFound {
        /// The cluster.
        cluster: String,
        /// The module path.
        module: PathBuf,
        /// The plan's token reference.
        wanted: String,
        /// Labels of the tokens that are there.
        present: String,
    },
    /// The PIN is wrong. It is never tried again in this run.
    #[error(
        "cluster `{cluster}`: login failed: wrong PIN for {role} `{user}` (tried once; hsm-sync never retries a PIN)"
    )]
    #[diagnostic(
        code(hsm::wrong_pin),
        help("fix the PIN in {pin_source}; a retry loop would lock the account")
    )]
    WrongPin {
        /// The cluster.
        cluster: String,
        /// The role.
        role: String,
        /// The user.
        user: String,
        /// Where the PIN came from (never the PIN).
        pin_source: String,
    },
    /// The PIN is locked, or one more failure would lock it: no login is attempted.
    #[error("cluster `{cluster}`: {what}; hsm-sync did not try to log in")]
    #[diagnostic(
        code(hsm::pin_locked),
        help("an HSM administrator must reset or unblock the user PIN")
    )]
    PinLocked {
        /// The cluster.
        cluster: String,
        /// "the user PIN is locked" or "the user PIN is on its final try".
        what: String,
    },
    /// What this machine lacks to reach the clusters (unset variables, missing module or
    /// PIN files, unset PIN variables), every one listed; nothing was tried.
    #[error("cannot go online: {}; nothing was tried", problems.join("; "))]
    #[diagnostic(
        code(hsm::not_ready),
        help("offline `validate` only warns about these; set the variables and install the files on the machine that runs online")
    )]
    NotReady {
        /// Each problem, naming its cluster.
        problems: Vec<String>,
    },
    /// The token offers no key-wrap mechanism hsm-sync can use (CONTRACT §1): none of
    /// its wrap mechanisms makes RFC 5649 or RFC 3394.
    #[error("cluster `{cluster}`: the token has no usable key-wrap mechanism ({found}); nothing was written")]
    #[diagnostic(
        code(hsm::no_wrap_mechanism),
        help("hsm-sync moves keys wrapped as RFC 5649 (CKM_AES_KEY_WRAP_KWP, or _PAD where it really is RFC 5649) or RFC 3394 (CKM_AES_KEY_WRAP); `hsm-sync probe PLAN {cluster}` shows what each mechanism makes")
    )]
    NoWrapMechanism {
        /// The cluster.
        cluster: String,
        /// What the probe found, per mechanism.
        found: String,
    },
    /// A source and a target share no wire format (CONTRACT §1), or not the one the plan
    /// pins with `lineage.wrap`.
    #[error("clusters `{source_cluster}` and `{target}` share no wire format for wrapped keys: {detail}; nothing was written")]
    #[diagnostic(
        code(hsm::no_common_mechanism),
        help("`hsm-sync probe PLAN CLUSTER` on each shows its formats; a pair needs RFC 5649 on both sides, or RFC 3394 on both (`lineage.wrap` pins one)")
    )]
    NoCommonFormat {
        /// The source cluster.
        source_cluster: String,
        /// The target cluster.
        target: String,
        /// Each side's formats.
        detail: String,
    },
    /// The plan names a profile hsm-sync does not have.
    #[error("cluster `{cluster}`: no profile named `{name}`")]
    #[diagnostic(code(hsm::unknown_profile), help("profiles: auto, {known}"))]
    UnknownProfile {
        /// The cluster.
        cluster: String,
        /// The name the plan gave.
        name: String,
        /// The names there are.
        known: String,
    },
    /// A `handle:` selector (or `sync-key`'s handle) names a key on a token whose handles
    /// last one session (its profile says so): the number may be another key's now.
    #[error("cluster `{cluster}` ({profile}): object handles there last one session, so `{selector}` (from {entry}) from an earlier run may name another key now")]
    #[diagnostic(
        code(hsm::session_handles),
        help("select the key by `id:` or `label:` instead (`hsm-sync inventory PLAN {cluster}` lists both)")
    )]
    SessionHandles {
        /// The source cluster.
        cluster: String,
        /// Its profile's name.
        profile: &'static str,
        /// The selector, as written (`handle:N`).
        selector: String,
        /// Where it came from: "entry `NAME`" (`sync-key`'s own entry too), or a flag.
        entry: String,
    },
    /// The domain (wrapping) key is missing or ambiguous.
    #[error("cluster `{cluster}`: {problem} domain key labelled `{label}`")]
    #[diagnostic(code(hsm::domain_key), help("{help}"))]
    DomainKey {
        /// The cluster.
        cluster: String,
        /// The label.
        label: String,
        /// "no", "more than one" (with the objects), or what the key lacks.
        problem: String,
        /// The fix for this problem.
        help: String,
    },
    /// The target does not share the source's domain key.
    #[error("lineage: `{target}` is not a clone of `{source_cluster}`: {detail}")]
    #[diagnostic(code(hsm::lineage), help("a target must hold the same domain key as its source (a cluster restored from the source's backup does); nothing was written"))]
    Lineage {
        /// The source cluster.
        source_cluster: String,
        /// The target cluster.
        target: String,
        /// What the proof saw.
        detail: String,
    },
    /// The lineage fingerprint differs from the one pinned in the plan.
    #[error("cluster `{cluster}`: lineage fingerprint is {actual}, the plan pins {pinned}")]
    #[diagnostic(
        code(hsm::lineage_pin),
        help("the token's domain key changed, or the plan points at the wrong token")
    )]
    LineagePin {
        /// The cluster.
        cluster: String,
        /// What the token proves.
        actual: String,
        /// What the plan says.
        pinned: String,
    },
    /// The token refused one of hsm-sync's own records, a private token data object
    /// (`CKO_DATA`): NSS softokn, for one, holds no token or private data objects
    /// (`CKR_ATTRIBUTE_VALUE_INVALID`; PKCS11-NOTES.md).
    #[error(
        "cluster `{cluster}` (token `{token}`): {}: {call}: the token holds no private token data objects (NSS softokn refuses them), and hsm-sync keeps {} in one",
        record.op(),
        record.what()
    )]
    #[diagnostic(code(hsm::no_data_objects), help("{}", record.help()))]
    NoDataObjects {
        /// The cluster.
        cluster: String,
        /// The token's label.
        token: String,
        /// Which record.
        record: DataRecord,
        /// The call and its `CKR_*` value (`C_CreateObject returned CKR_…`).
        call: String,
    },
    /// Any other PKCS#11 failure.
    #[error("cluster `{cluster}`: {op}: {}", describe(error))]
    #[diagnostic(code(hsm::pkcs11))]
    Pkcs11 {
        /// The cluster.
        cluster: String,
        /// What hsm-sync was doing.
        op: &'static str,
        /// cryptoki's error, with the function and `CKR_*` value.
        error: cryptoki::error::Error,
    },
}

/// Which of hsm-sync's own records (data objects) a token refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataRecord {
    /// The in-flight journal, written on each target before any copy.
    Journal,
    /// A state record (lifecycle events, claims), on a source.
    State,
}

impl DataRecord {
    /// What hsm-sync was doing.
    pub fn op(self) -> &'static str {
        match self {
            DataRecord::Journal => "writing the in-flight journal",
            DataRecord::State => "writing an hsm-sync data object",
        }
    }

    /// What the record is for.
    pub fn what(self) -> &'static str {
        match self {
            DataRecord::Journal => "the in-flight journal of each target",
            DataRecord::State => "the lifecycle records of the `token` state backend, kept on the source token",
        }
    }

    /// What a token that refuses it means for the run.
    pub fn help(self) -> &'static str {
        match self {
            DataRecord::Journal => "the journal is written on every target before any key is copied (the next run repairs only copies it names); nothing was copied to it. Keep state off the token: `state: {backend: file, path: ./.hsm-sync-state}` or `state: {backend: postgres, url_env: HSM_SYNC_STATE_URL}`",
            DataRecord::State => "this token holds no data objects: keep state off it with `state: {backend: file, path: ./.hsm-sync-state}` or `state: {backend: postgres, url_env: HSM_SYNC_STATE_URL}` (CONTRACT §6)",
        }
    }
}

/// The help of a module that does not load: SoftHSM's package only for SoftHSM's path
/// (every vendor's path got `apt-get install softhsm2` once; issue 16).
pub(crate) fn module_hint(module: &std::path::Path) -> String {
    if module.to_string_lossy().contains("softhsm") {
        "check `module:` in the plan; SoftHSM2 is `apt-get install -y softhsm2` on Debian".into()
    } else {
        "check `module:` in the plan: install the vendor's PKCS#11 library there (its client or SDK package), or point `module:` at it".into()
    }
}

/// `C_UnwrapKey returned CKR_GENERAL_ERROR` rather than cryptoki's long prose: the
/// constant is what operators search vendor documentation for.
pub fn describe(e: &cryptoki::error::Error) -> String {
    match e {
        cryptoki::error::Error::Pkcs11(rv, func) => format!("C_{func:?} returned {}", ckr_name(rv)),
        other => other.to_string(),
    }
}

/// The `CKR_` constant of a return value (`CKR_GENERAL_ERROR`), from cryptoki's name.
pub(crate) fn ckr_name(rv: &cryptoki::error::RvError) -> String {
    let camel = format!("{rv:?}");
    let mut ckr = String::from("CKR_");
    for (i, ch) in camel.chars().enumerate() {
        if ch.is_ascii_uppercase() && i > 0 {
            ckr.push('_');
        }
        ckr.push(ch.to_ascii_uppercase());
    }
    ckr
}
