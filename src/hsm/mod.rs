//! Stage 3: the tokens. The only module that names `cryptoki`: it loads each PKCS#11
//! module once, finds tokens, logs in once per token, and offers key operations in the
//! domain types of [`crate::domain::key`].
//!
//! Thread model (rust-cryptoki `thread_local_session.rs`, parsec): one `Pkcs11` context
//! per module, initialised with `OS_LOCKING_OK` (without it SoftHSM turns its mutexes
//! off) and shared; one `Session` per worker (`Send`, not `Sync`).
//!
//! This file loads modules and opens tokens ([`Modules`], [`Token`]: login once, one
//! session per worker). The rest, one concern a file:
//!
//! - `port.rs`: the key-store port (`KeyStore`, `KeySession`) the executor is generic
//!   over; `memory.rs` its in-memory implementation for unit tests;
//! - `session.rs`: `TokenSession`, reading and changing keys in place;
//! - `wrap.rs`: `Wrapped`, wrap, unwrap and public-key copies, `WrapMechanism`;
//! - `fingerprint.rs`: the fingerprint digests of wrapped blobs and public keys;
//! - `lineage.rs`: the lineage fingerprint and proof;
//! - `records.rs`: hsm-sync's own data objects (the in-flight journal, state records);
//! - [`attributes`], `profile.rs`: the attribute table and the per-vendor profiles;
//! - `raw.rs`: the FFI edge, where all of the crate's raw PKCS#11 calls live;
//! - `trace.rs`: the choke point every PKCS#11 call goes through, for `-vv`;
//! - [`softhsm`]: demo provisioning; `error.rs`: [`HsmError`].

pub mod attributes;
mod capabilities;
mod error;
mod fingerprint;
mod lineage;
#[cfg(test)]
pub(crate) mod memory;
mod port;
mod profile;
#[allow(unsafe_code)]
mod raw;
mod records;
mod session;
pub mod softhsm;
mod trace;
mod wrap;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use cryptoki::context::Pkcs11;
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::object::{Attribute, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use secrecy::SecretString;

pub use crate::domain::wire::WireFormat;
pub use capabilities::{Capabilities, Made, WrapMechanism, WrapProbe};
pub use error::{describe, DataRecord, HsmError};
pub(crate) use fingerprint::public_fingerprint;
pub(crate) use port::{KeySession, KeyStore, RecordSession};
pub use records::APPLICATION;
pub(crate) use records::{DataObject, STATE_PREFIX};
pub(crate) use session::TokenSession;
pub(crate) use trace::TARGET as TRACE_TARGET;
pub(crate) use wrap::Wrapped;

use crate::domain::handle::Handle;
use crate::domain::token::TokenRef;
use raw::RawFns;

/// Which token a cluster is, as the token layer needs it (built from the plan by
/// `connect`, so this module never names plan types).
pub struct TokenSpec<'a> {
    /// The cluster's name, for errors.
    pub name: &'a str,
    /// The PKCS#11 module.
    pub module: &'a Path,
    /// Which of the module's tokens.
    pub token: &'a TokenRef,
    /// The domain key's label.
    pub domain_key: &'a str,
    /// `C_Initialize`'s pReserved string (`module_args`), for modules that need one.
    pub module_args: Option<&'a str>,
    /// The profile the plan names (`None`: chosen by manufacturer and model).
    pub profile: Option<&'a str>,
}

/// Who logs in, for the messages of a failed login (never the PIN).
pub struct LoginSpec<'a> {
    /// The role, as the plan names it.
    pub role: &'a str,
    /// The user, as the plan names it.
    pub user: &'a str,
    /// Where the PIN came from.
    pub pin_source: &'a str,
}

/// A loaded module: cryptoki's context and, where available, the raw function list.
type Loaded = (Arc<Pkcs11>, Arc<RawFns>);

/// A loaded module, the cluster that loaded it first and the `module_args` it was
/// initialised with.
type LoadedBy = (Loaded, String, Option<String>);

/// The loaded PKCS#11 modules of a run, each loaded and initialised once.
#[derive(Default)]
pub struct Modules {
    loaded: Mutex<HashMap<PathBuf, LoadedBy>>,
    /// The `module_args` strings given to `C_Initialize`, kept while the modules live
    /// (a module may keep the pointer).
    args: Mutex<Vec<std::ffi::CString>>,
}

impl Modules {
    /// Loads (or returns the already loaded) module at `path`, with its raw function list.
    fn load_with_raw(&self, cluster: &str, path: &Path, module_args: Option<&str>) -> Result<Loaded, HsmError> {
        let module_err = |detail: String| HsmError::Module {
            cluster: cluster.to_string(),
            module: path.to_path_buf(),
            detail,
            hint: error::module_hint(path),
        };
        // Two spellings of one library must share one context: a second C_Initialize
        // of the same library would fail.
        let key = std::fs::canonicalize(path).map_err(|e| module_err(e.to_string()))?;
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((both, first, first_args)) = loaded.get(&key) {
            // A process initialises a module once: a cluster asking for other
            // `module_args` would silently get the first one's (NSS softokn: the first
            // cluster's database, whose token has the same label as every NSS token).
            if first_args.as_deref() != module_args {
                return Err(module_err(format!(
                    "cluster `{first}` already initialised this module with {}, and a process initialises a PKCS#11 module once: every cluster on one module must give the same `module_args` (NSS softokn opens one database per run)",
                    match first_args {
                        Some(a) => format!("module_args \"{a}\""),
                        None => "no module_args".into(),
                    }
                )));
            }
            return Ok(both.clone());
        }
        let ctx = trace::call("C_GetFunctionList", || Pkcs11::new(&key)).map_err(|e| module_err(e.to_string()))?;
        let args = match module_args {
            Some(a) => {
                Some(std::ffi::CString::new(a).map_err(|_| module_err("`module_args` holds a NUL byte".into()))?)
            }
            None => None,
        };
        match trace::call("C_Initialize", || ctx.initialize(raw::init_args(args.as_deref()))) {
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(e @ CkError::Pkcs11(RvError::ArgumentsBad, _)) if args.is_none() => {
                return Err(module_err(format!(
                    "{}; this module may need `module_args` (NSS softokn: \"configdir='sql:DIR' certPrefix='' keyPrefix='' secmod='secmod.db' flags=\")",
                    describe(&e)
                )))
            }
            Err(e) => return Err(module_err(describe(&e))),
        }
        if let Some(a) = args {
            self.args.lock().unwrap_or_else(|p| p.into_inner()).push(a);
        }
        let raw =
            RawFns::load(&key).ok_or_else(|| module_err("the module hands out no C_GetFunctionList table".into()))?;
        let both = (Arc::new(ctx), Arc::new(raw));
        loaded.insert(
            key,
            (both.clone(), cluster.to_string(), module_args.map(str::to_string)),
        );
        Ok(both)
    }
}

/// Facts about a token, for messages and saved-plan digests.
#[derive(Debug, Clone)]
pub struct TokenFacts {
    /// Token label.
    pub label: String,
    /// Serial number.
    pub serial: String,
    /// Manufacturer id.
    pub manufacturer: String,
    /// Model.
    pub model: String,
    /// Slot id.
    pub slot: u64,
}

/// One cluster's token, logged in for the whole run.
pub struct Token {
    /// The plan's cluster name.
    pub cluster: String,
    ctx: Arc<Pkcs11>,
    raw: Arc<RawFns>,
    slot: Slot,
    /// What the probe learned, once per run.
    capabilities: std::sync::OnceLock<Capabilities>,
    /// The profile the plan chose, if it chose one.
    chosen_profile: Option<&'static profile::Profile>,
    /// The wrap mechanism `connect` chose for this token's pairs.
    wire: Mutex<Option<WrapMechanism>>,
    /// What unwrap templates this token refused this run (`wrap.rs`, the ladder).
    ladder: Arc<std::sync::atomic::AtomicU8>,
    /// Facts read from `C_GetTokenInfo`.
    pub facts: TokenFacts,
    domain_label: String,
    /// Keeps the login alive: PKCS#11 logs out when the application's last session closes.
    anchor: Mutex<Option<Session>>,
    domain_key: Mutex<Option<ObjectHandle>>,
    /// The key handles login's enumeration met, until the inventory takes them.
    listed: Mutex<Option<Vec<Handle>>>,
}

impl Token {
    /// Finds the cluster's token in its module.
    pub fn open(modules: &Modules, cluster: &TokenSpec<'_>) -> Result<Token, HsmError> {
        let chosen_profile = match cluster.profile {
            None => None,
            Some(name) => Some(profile::by_name(name).ok_or_else(|| HsmError::UnknownProfile {
                cluster: cluster.name.to_string(),
                name: name.to_string(),
                known: profile::names().join(", "),
            })?),
        };
        let (ctx, raw) = modules.load_with_raw(cluster.name, cluster.module, cluster.module_args)?;
        let pk = |op, error| HsmError::Pkcs11 {
            cluster: cluster.name.to_string(),
            op,
            error,
        };
        let slots = trace::call("C_GetSlotList", || ctx.get_slots_with_token()).map_err(|e| pk("listing slots", e))?;
        let mut present = Vec::new();
        for slot in slots {
            let info = token_info(&ctx, slot).map_err(|e| pk("reading token info", e))?;
            let hit = match cluster.token {
                TokenRef::Label(l) => info.label() == l,
                TokenRef::Serial(s) => info.serial_number() == s,
                TokenRef::Slot(id) => slot.id() == *id,
            };
            if hit {
                return Ok(Token {
                    cluster: cluster.name.to_string(),
                    ctx: ctx.clone(),
                    raw: raw.clone(),
                    slot,
                    capabilities: std::sync::OnceLock::new(),
                    chosen_profile,
                    wire: Mutex::new(None),
                    ladder: Arc::default(),
                    facts: TokenFacts {
                        label: info.label().to_string(),
                        serial: info.serial_number().to_string(),
                        manufacturer: info.manufacturer_id().to_string(),
                        model: info.model().to_string(),
                        slot: slot.id(),
                    },
                    domain_label: cluster.domain_key.to_string(),
                    anchor: Mutex::new(None),
                    domain_key: Mutex::new(None),
                    listed: Mutex::new(None),
                });
            }
            if info.token_initialized() {
                present.push(format!(
                    "`{}` (slot {}, serial {})",
                    info.label(),
                    slot.id(),
                    info.serial_number()
                ));
            }
        }
        Err(HsmError::TokenNotFound {
            cluster: cluster.name.to_string(),
            module: cluster.module.to_path_buf(),
            wanted: cluster.token.to_string(),
            present: if present.is_empty() {
                "none".into()
            } else {
                present.join(", ")
            },
        })
    }

    fn pk(&self, op: &'static str) -> impl FnOnce(CkError) -> HsmError + '_ {
        move |error| HsmError::Pkcs11 {
            cluster: self.cluster.clone(),
            op,
            error,
        }
    }

    /// Logs in as `CKU_USER`, once. The PIN is tried at most once: a locked token or one
    /// on its final try is not even attempted, and a wrong PIN is never retried.
    pub fn login(&self, who: &LoginSpec<'_>, pin: &SecretString) -> Result<(), HsmError> {
        let info = token_info(&self.ctx, self.slot).map_err(self.pk("reading token info"))?;
        let locked = |what: &str| HsmError::PinLocked {
            cluster: self.cluster.clone(),
            what: what.into(),
        };
        if info.user_pin_locked() {
            return Err(locked("the user PIN is locked"));
        }
        if info.user_pin_final_try() {
            return Err(locked("the user PIN is on its final try (one more failure locks it)"));
        }
        let session = trace::call("C_OpenSession", || self.ctx.open_rw_session(self.slot))
            .map_err(self.pk("opening a session"))?;
        let composed = self.profile().pin_with_user.then(|| with_user(who.user, pin));
        let pin = composed.as_ref().unwrap_or(pin);
        // CKR_USER_PIN_NOT_INITIALIZED means the token checked no PIN at all: SoftHSM
        // answers so while another process rewrites the token's file (measured: two
        // racing `notify` runs). Asking again then spends no PIN attempt; any answer
        // that did check the PIN is final (a wrong PIN is never retried). Up to ~1.5 s
        // in all: two tries 150 ms apart were not enough on a loaded 2-core machine.
        let mut attempt: u32 = 0;
        let login = loop {
            match trace::call("C_Login", || session.login(UserType::User, Some(pin))) {
                Err(CkError::Pkcs11(RvError::UserPinNotInitialized, _)) if attempt < 5 => {
                    std::thread::sleep(std::time::Duration::from_millis(50 << attempt));
                    attempt += 1;
                }
                r => break r,
            }
        };
        match login {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(CkError::Pkcs11(RvError::PinIncorrect | RvError::PinInvalid | RvError::PinLenRange, _)) => {
                return Err(HsmError::WrongPin {
                    cluster: self.cluster.clone(),
                    role: who.role.to_string(),
                    user: who.user.to_string(),
                    pin_source: who.pin_source.to_string(),
                })
            }
            Err(CkError::Pkcs11(RvError::PinLocked, _)) => return Err(locked("the user PIN is locked")),
            Err(e) => return Err(self.pk("logging in")(e)),
        }
        // SoftHSM numbers objects per process, in the order a search first meets them.
        // Meeting every key once, before any lookup or session object, gives each the
        // same handle in every run while the token's keys are unchanged, so the handles
        // `inventory` prints mean the same keys to `sync-key` and `handle:` selectors.
        // Keys first: hsm-sync's own data objects (state, journal) come and go and must
        // not renumber them. In batches of 1,024, not cryptoki's 10: a round trip per 10
        // objects is seconds on a network HSM with many keys.
        // The handles are kept for the inventory, which would otherwise search again (on
        // SoftHSM a search re-checks every object's file: ~15 ms per 1,000 objects).
        let mut listed = Vec::new();
        for class in [
            ObjectClass::SECRET_KEY,
            ObjectClass::PRIVATE_KEY,
            ObjectClass::PUBLIC_KEY,
        ] {
            let found = trace::call("C_FindObjects", || {
                session
                    .iter_objects_with_cache_size(
                        &[Attribute::Token(true), Attribute::Class(class)],
                        session::FIND_BATCH,
                    )?
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(self.pk("listing objects"))?;
            for h in found {
                listed.push(raw::handle(h));
            }
        }
        *self.listed.lock().unwrap_or_else(|p| p.into_inner()) = Some(listed);
        *self.anchor.lock().unwrap_or_else(|p| p.into_inner()) = Some(session);
        Ok(())
    }

    /// How many keys login's search found (the domain key included), while the
    /// inventory has not taken them.
    pub fn listed_len(&self) -> Option<usize> {
        self.listed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(Vec::len)
    }

    /// The key handles login found (every token key, the domain key included), once:
    /// the first inventory after login takes them; later ones search. Commands that
    /// write lock the token before logging in, so no other run changes its keys between.
    pub fn take_listed_keys(&self) -> Option<Vec<Handle>> {
        self.listed.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// The profile of this token's family: the plan's `profile:`, else chosen by the
    /// token's manufacturer and model.
    pub fn profile(&self) -> &'static profile::Profile {
        self.chosen_profile
            .unwrap_or_else(|| profile::for_token(&self.facts.manufacturer, &self.facts.model))
    }

    /// Makes the domain key on a logged-in token that has none (CONTRACT.md §2 `lineage
    /// create`): AES-256, a private and sensitive token object that can never be
    /// extracted, for wrap/unwrap/encrypt/decrypt. Returns its handle. Refused when the
    /// token already holds a key under the label: a second one would split the lineage.
    pub fn create_domain_key(&self) -> Result<Handle, HsmError> {
        let s = trace::call("C_OpenSession", || self.ctx.open_rw_session(self.slot))
            .map_err(self.pk("opening a session"))?;
        self.refuse_second_domain_key(&s, "made")?;
        let mut template = attributes::domain_key_template(&self.domain_label);
        template.push(Attribute::ValueLen(32.into()));
        let h = trace::call("C_GenerateKey", || {
            s.generate_key(&cryptoki::mechanism::Mechanism::AesKeyGen, &template)
        })
        .map_err(self.pk("generating the domain key"))?;
        Ok(raw::handle(h))
    }

    /// Imports the domain key with a known 32-byte value, the XOR of a key ceremony's
    /// components (CONTRACT.md §2 `lineage import`): the same attributes as
    /// [`Token::create_domain_key`], by `C_CreateObject`. Returns its handle. Refused,
    /// with nothing written, when the token already holds a key under the label.
    pub fn import_domain_key(&self, value: &zeroize::Zeroizing<Vec<u8>>) -> Result<Handle, HsmError> {
        let s = trace::call("C_OpenSession", || self.ctx.open_rw_session(self.slot))
            .map_err(self.pk("opening a session"))?;
        self.refuse_second_domain_key(&s, "imported")?;
        let mut template = attributes::domain_key_template(&self.domain_label);
        template.push(Attribute::Value(value.to_vec()));
        let made = trace::call("C_CreateObject", || s.create_object(&template));
        // cryptoki's template holds a plain copy of the value: wipe it before it is freed.
        for a in &mut template {
            if let Attribute::Value(v) = a {
                zeroize::Zeroize::zeroize(v);
            }
        }
        let h = made.map_err(self.pk("importing the domain key"))?;
        Ok(raw::handle(h))
    }

    /// Refuses when the token already holds an object under the domain key's label (a
    /// second key would split the lineage), naming its handles: `lineage import` asks it
    /// before any custodian types a component.
    pub fn check_no_domain_key(&self) -> Result<(), HsmError> {
        // Read-write like every session here: some tokens (CloudHSM) open no other kind.
        let s = trace::call("C_OpenSession", || self.ctx.open_rw_session(self.slot))
            .map_err(self.pk("opening a session"))?;
        self.refuse_second_domain_key(&s, "imported")
    }

    /// The refusal of a second domain key; `what` says what was not done (`made`, `imported`).
    fn refuse_second_domain_key(&self, s: &Session, what: &str) -> Result<(), HsmError> {
        let existing = trace::call("C_FindObjects", || {
            s.find_objects(&[Attribute::Label(self.domain_label.as_bytes().to_vec())])
        })
        .map_err(self.pk("finding the domain key"))?;
        if existing.is_empty() {
            return Ok(());
        }
        let which: Vec<String> = existing.iter().map(|h| format!("handle {}", h.handle())).collect();
        Err(HsmError::DomainKey {
            cluster: self.cluster.clone(),
            label: self.domain_label.clone(),
            problem: format!("already a ({})", which.join(", ")),
            help: format!("nothing was {what}: a token holds one domain key; print its lineage fingerprint with `hsm-sync inventory PLAN CLUSTER`"),
        })
    }

    /// What this token can do (its mechanisms, what each wrap mechanism makes), probed
    /// once per run on a logged-in token with session objects only.
    pub fn capabilities(&self) -> Result<&Capabilities, HsmError> {
        if let Some(c) = self.capabilities.get() {
            return Ok(c);
        }
        let s = trace::call("C_OpenSession", || self.ctx.open_rw_session(self.slot))
            .map_err(self.pk("opening a session"))?;
        let c = capabilities::probe(&self.raw, &s, self.slot.id(), self.profile().vendor_wraps)
            .map_err(self.pk("probing the wrap mechanisms"))?;
        Ok(self.capabilities.get_or_init(|| c))
    }

    /// Uses `mechanism` for every wrap and unwrap of this run (the pair's wire format).
    pub fn use_wrap(&self, mechanism: WrapMechanism) {
        *self.wire.lock().unwrap_or_else(|p| p.into_inner()) = Some(mechanism);
    }

    /// The mechanism wraps and unwraps use: the one `connect` chose, else this token's
    /// preferred format (RFC 5649, else RFC 3394).
    pub fn wrap_mechanism(&self) -> Result<WrapMechanism, HsmError> {
        if let Some(m) = *self.wire.lock().unwrap_or_else(|p| p.into_inner()) {
            return Ok(m);
        }
        let caps = self.capabilities()?;
        caps.formats()
            .first()
            .and_then(|f| caps.mechanism_for(*f))
            .ok_or_else(|| HsmError::NoWrapMechanism {
                cluster: self.cluster.clone(),
                found: capabilities::summary(caps),
            })
    }

    /// The label of this token's domain key.
    pub fn domain_label(&self) -> &str {
        &self.domain_label
    }

    /// A new read-write session (one per worker; the login is shared by all).
    pub fn session(&self) -> Result<TokenSession, HsmError> {
        self.session_with(self.wrap_mechanism()?)
    }

    /// A session that wraps and unwraps in `format` (a pair of this token's whose format
    /// is not its first pair's), or in this run's mechanism when `None` or the same.
    pub fn session_in(&self, format: Option<WireFormat>) -> Result<TokenSession, HsmError> {
        let primary = self.wrap_mechanism()?;
        match format {
            Some(f) if f != primary.format => {
                let m = self
                    .capabilities()?
                    .mechanism_for(f)
                    .ok_or_else(|| HsmError::NoWrapMechanism {
                        cluster: self.cluster.clone(),
                        found: f.code().into(),
                    })?;
                self.session_with(m)
            }
            _ => self.session_with(primary),
        }
    }

    fn session_with(&self, wrap: WrapMechanism) -> Result<TokenSession, HsmError> {
        let s = trace::call("C_OpenSession", || self.ctx.open_rw_session(self.slot))
            .map_err(self.pk("opening a session"))?;
        let mut dk = self.domain_key.lock().unwrap_or_else(|p| p.into_inner());
        let domain_key = match *dk {
            Some(h) => h,
            None => {
                let h = session::find_domain_key(&s, &self.cluster, &self.domain_label)?;
                *dk = Some(h);
                h
            }
        };
        Ok(TokenSession::new(
            s,
            self.cluster.clone(),
            self.facts.label.clone(),
            domain_key,
            self.profile(),
            self.raw.clone(),
            wrap,
            self.ladder.clone(),
        ))
    }
}

/// The PIN a `user:password` token (CloudHSM) takes: `USER:PIN`, unless the PIN source
/// already holds it in that form.
fn with_user(user: &str, pin: &SecretString) -> SecretString {
    use secrecy::ExposeSecret;
    let bare = pin.expose_secret();
    if bare.starts_with(&format!("{user}:")) {
        return pin.clone();
    }
    let mut joined = zeroize::Zeroizing::new(String::with_capacity(user.len() + 1 + bare.len()));
    joined.push_str(user);
    joined.push(':');
    joined.push_str(bare);
    SecretString::from(joined.as_str())
}

/// `C_GetTokenInfo`, tried up to three times on `CKR_GENERAL_ERROR`: SoftHSM answers so
/// while another process is rewriting the token's files (measured: a second `apply`
/// opening the source while the first writes its lifecycle records). Reading the info is
/// harmless to repeat; a login never is, and is not retried anywhere.
fn token_info(ctx: &Pkcs11, slot: Slot) -> Result<cryptoki::slot::TokenInfo, CkError> {
    let mut attempt = 0;
    loop {
        match trace::call("C_GetTokenInfo", || ctx.get_token_info(slot)) {
            Err(CkError::Pkcs11(RvError::GeneralError, _)) if attempt < 2 => {
                attempt += 1;
                std::thread::sleep(std::time::Duration::from_millis(50 * attempt));
            }
            r => return r,
        }
    }
}

/// Whether a PKCS#11 error is worth retrying: the device or session hiccuped, the
/// request itself was fine.
pub fn is_transient(e: &HsmError) -> bool {
    matches!(
        e,
        HsmError::Pkcs11 {
            error: CkError::Pkcs11(
                RvError::DeviceError
                    | RvError::DeviceMemory
                    | RvError::SessionHandleInvalid
                    | RvError::SessionClosed
                    | RvError::HostMemory,
                _
            ),
            ..
        }
    )
}

#[cfg(test)]
mod tests {
    use secrecy::{ExposeSecret, SecretString};

    #[test]
    fn a_user_password_pin_is_composed_once() {
        let pin = SecretString::from("s3cret");
        assert_eq!(super::with_user("app-cu", &pin).expose_secret(), "app-cu:s3cret");
        let already = SecretString::from("app-cu:s3cret");
        assert_eq!(super::with_user("app-cu", &already).expose_secret(), "app-cu:s3cret");
        let other = SecretString::from("other:s3cret");
        assert_eq!(
            super::with_user("app-cu", &other).expose_secret(),
            "app-cu:other:s3cret"
        );
    }
}
