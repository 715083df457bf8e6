//! SoftHSM token directories for `hsm-sync demo`: a directory with its own
//! `softhsm2.conf`, tokens initialised through PKCS#11 (`C_InitToken`, `C_InitPIN`), a
//! domain key shared by "cloned" tokens, and secret keys to sync. Never used against real
//! HSMs. `tools/testkit` builds its test fixtures on these same functions, so the demo
//! and the tests make tokens one way.

use std::path::{Path, PathBuf};

use cryptoki::context::Pkcs11;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, KeyType as CkKeyType, ObjectClass};
use cryptoki::session::{Session, UserType};
use secrecy::SecretString;
use zeroize::Zeroizing;

use crate::domain::handle::Handle;
use crate::domain::key::KeyType;

use super::HsmError;

/// Where Debian and others install SoftHSM2's module.
pub const SOFTHSM_PATHS: &[&str] = &[
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
];

/// The SoftHSM2 module: `$HSM_SYNC_SOFTHSM_MODULE`, else the first standard path present.
pub fn softhsm_module() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("HSM_SYNC_SOFTHSM_MODULE") {
        return Some(PathBuf::from(p));
    }
    SOFTHSM_PATHS.iter().map(PathBuf::from).find(|p| p.exists())
}

/// Writes `DIR/softhsm2.conf` pointing at `DIR/tokens` and returns the config's path.
/// The process must then set `SOFTHSM2_CONF` to it before loading the module.
pub fn write_conf(dir: &Path) -> std::io::Result<PathBuf> {
    let tokens = dir.join("tokens");
    std::fs::create_dir_all(&tokens)?;
    let conf = dir.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
            tokens.display()
        ),
    )?;
    Ok(conf)
}

/// The error of a failed PKCS#11 call while making tokens or keys: `op` says what was
/// being done.
pub fn provision_error(op: &'static str) -> impl FnOnce(cryptoki::error::Error) -> HsmError {
    move |error| HsmError::Pkcs11 {
        cluster: "provision".into(),
        op,
        error,
    }
}

/// A loaded module for provisioning (SoftHSM, or for the tests another make).
pub struct Provisioner {
    // Declared first, so dropped (finalised) before the string it may point into.
    ctx: Pkcs11,
    /// The module's raw function list, for what cryptoki 0.12 cannot say (the SHA-224/384/512
    /// HMAC key types); `None` when the module hands out none.
    raw: Option<super::raw::RawFns>,
    /// The `module_args` string given to `C_Initialize`, kept while the module lives.
    _args: Option<std::ffi::CString>,
}

/// A secret key to create.
#[derive(Debug, Clone)]
pub struct SecretSpec {
    /// AES or generic secret.
    pub aes: bool,
    /// DES3 (overrides `aes`; `bytes` is ignored).
    pub des3: bool,
    /// Length in bytes.
    pub bytes: usize,
    /// `CKA_ID`.
    pub id: Vec<u8>,
    /// `CKA_LABEL`.
    pub label: String,
    /// `CKA_EXTRACTABLE`.
    pub extractable: bool,
    /// `CKA_PRIVATE`.
    pub private: bool,
    /// `CKA_SENSITIVE`.
    pub sensitive: bool,
}

impl SecretSpec {
    /// What a key made from this spec carries besides its value (or its length): class,
    /// key type, and a token object named by the spec, for encryption (AES, DES3) or HMAC
    /// (generic secret), never a wrapping key.
    pub fn template(&self) -> Vec<Attribute> {
        let key_type = if self.des3 {
            CkKeyType::DES3
        } else if self.aes {
            CkKeyType::AES
        } else {
            CkKeyType::GENERIC_SECRET
        };
        let cipher = self.aes || self.des3;
        vec![
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(key_type),
            Attribute::Token(true),
            Attribute::Id(self.id.clone()),
            Attribute::Label(self.label.as_bytes().to_vec()),
            Attribute::Private(self.private),
            Attribute::Sensitive(self.sensitive),
            Attribute::Extractable(self.extractable),
            Attribute::Encrypt(cipher),
            Attribute::Decrypt(cipher),
            Attribute::Sign(!cipher),
            Attribute::Verify(!cipher),
            Attribute::Wrap(false),
            Attribute::Unwrap(false),
            Attribute::Derive(false),
        ]
    }
}

impl Provisioner {
    /// Loads and initialises the module.
    pub fn new(module: &Path) -> Result<Self, HsmError> {
        Self::with_module_args(module, None)
    }

    /// Loads the module and initialises it with `module_args` as `C_Initialize`'s
    /// pReserved string, as a plan's `module_args` is (NSS softokn needs one: its
    /// `configdir='sql:DIR' …`). The one unsafe call stays in hsm-sync's FFI edge; the
    /// string lives as long as the module.
    pub fn with_module_args(module: &Path, module_args: Option<&str>) -> Result<Self, HsmError> {
        let module_err = |detail: String| HsmError::Module {
            cluster: "provision".into(),
            module: module.to_path_buf(),
            detail,
            hint: super::error::module_hint(module),
        };
        let ctx = Pkcs11::new(module).map_err(|e| module_err(e.to_string()))?;
        let args = module_args
            .map(std::ffi::CString::new)
            .transpose()
            .map_err(|_| module_err("`module_args` holds a NUL byte".into()))?;
        ctx.initialize(super::raw::init_args(args.as_deref()))
            .map_err(provision_error("C_Initialize"))?;
        let raw = super::raw::RawFns::load(module);
        Ok(Provisioner { ctx, raw, _args: args })
    }

    /// The raw function list, or the error of a module that hands out none.
    fn raw(&self, op: &'static str) -> Result<&super::raw::RawFns, HsmError> {
        self.raw
            .as_ref()
            .ok_or_else(|| provision_error(op)(cryptoki::error::Error::NullFunctionPointer))
    }

    /// Creates a key of `key_type` from `template` (which names no key type) on session
    /// `s`, with the key type sent raw as copies are: cryptoki 0.12 cannot hold
    /// `CKK_SHA224/384/512_HMAC` (PKCS11-NOTES.md).
    pub fn create_key(&self, s: &Session, key_type: KeyType, template: &[Attribute]) -> Result<Handle, HsmError> {
        let op = "creating a key";
        let ckk = super::attributes::ck_key_type(key_type)
            .ok_or_else(|| provision_error(op)(cryptoki::error::Error::NotSupported))?;
        let h = self
            .raw(op)?
            .create_object(s, ckk, template)
            .map_err(provision_error(op))?;
        Ok(super::raw::handle(h))
    }

    /// The `CKA_KEY_TYPE` of the object at `handle`, the number the token gives (cryptoki
    /// 0.12 reads the SHA-224/384/512 HMAC types as `CKK_SHA256_HMAC`).
    pub fn raw_key_type(&self, s: &Session, handle: Handle) -> Result<u64, HsmError> {
        let op = "reading the key type";
        self.raw(op)?
            .ulong_attribute(s, super::raw::object(handle), cryptoki_sys::CKA_KEY_TYPE)
            .map_err(provision_error(op))
    }

    /// Initialises a token with `label` in SoftHSM's free slot and sets its user PIN.
    pub fn init_token(&self, label: &str, so_pin: &SecretString, user_pin: &SecretString) -> Result<(), HsmError> {
        let slots = self.ctx.get_all_slots().map_err(provision_error("listing slots"))?;
        let mut free = None;
        for s in slots {
            let info = self
                .ctx
                .get_token_info(s)
                .map_err(provision_error("reading token info"))?;
            if !info.token_initialized() {
                free = Some(s);
                break;
            }
        }
        let slot = free.ok_or_else(|| provision_error("finding a free slot")(cryptoki::error::Error::NotSupported))?;
        self.ctx
            .init_token(slot, so_pin, label)
            .map_err(provision_error("C_InitToken"))?;
        let session = self.open(label)?;
        session
            .login(UserType::So, Some(so_pin))
            .map_err(provision_error("SO login"))?;
        session.init_pin(user_pin).map_err(provision_error("C_InitPIN"))?;
        session.logout().map_err(provision_error("SO logout"))?;
        Ok(())
    }

    fn open(&self, label: &str) -> Result<Session, HsmError> {
        // SoftHSM renumbers slots after C_InitToken: look the label up each time.
        for s in self
            .ctx
            .get_slots_with_token()
            .map_err(provision_error("listing slots"))?
        {
            let info = self
                .ctx
                .get_token_info(s)
                .map_err(provision_error("reading token info"))?;
            if info.label() == label {
                return self
                    .ctx
                    .open_rw_session(s)
                    .map_err(provision_error("opening a session"));
            }
        }
        Err(provision_error("finding the token")(
            cryptoki::error::Error::NotSupported,
        ))
    }

    /// A user session on the token labelled `label`.
    pub fn user_session(&self, label: &str, pin: &SecretString) -> Result<Session, HsmError> {
        let s = self.open(label)?;
        s.login(UserType::User, Some(pin))
            .map_err(provision_error("user login"))?;
        Ok(s)
    }
}

/// Imports a domain (wrapping) key with a known value: how the demo and tests model
/// clusters cloned from one another. Not extractable, wrap/unwrap/encrypt only.
pub fn import_domain_key(s: &Session, label: &str, value: &Zeroizing<Vec<u8>>) -> Result<(), HsmError> {
    let mut template = super::attributes::domain_key_template(label);
    template.push(Attribute::Value(value.to_vec()));
    s.create_object(&template)
        .map_err(provision_error("importing the domain key"))?;
    Ok(())
}

/// Generates a secret key on the token (AES or DES3 for encryption, generic secret for
/// HMAC); returns its handle.
pub fn generate_secret(s: &Session, spec: &SecretSpec) -> Result<Handle, HsmError> {
    let mech = if spec.des3 {
        Mechanism::Des3KeyGen
    } else if spec.aes {
        Mechanism::AesKeyGen
    } else {
        Mechanism::GenericSecretKeyGen
    };
    let mut template = spec.template();
    if !spec.des3 {
        template.push(Attribute::ValueLen((spec.bytes as u64).into()));
    }
    let h = s
        .generate_key(&mech, &template)
        .map_err(provision_error("generating a key"))?;
    Ok(super::raw::handle(h))
}
