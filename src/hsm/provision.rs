//! SoftHSM provisioning for `demo` and the test fixture: a token directory with its own
//! `softhsm2.conf`, tokens initialised through PKCS#11 (`C_InitToken`, `C_InitPIN`), a
//! domain key shared by "cloned" tokens, and keys to sync. Never used against real HSMs.

use std::path::{Path, PathBuf};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType as CkKeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use secrecy::SecretString;
use zeroize::Zeroizing;

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

fn pk(op: &'static str) -> impl FnOnce(cryptoki::error::Error) -> HsmError {
    move |error| HsmError::Pkcs11 {
        cluster: "provision".into(),
        op,
        error,
    }
}

/// A loaded SoftHSM module for provisioning.
pub struct Provisioner {
    ctx: Pkcs11,
}

/// A secret key to create.
#[derive(Debug, Clone)]
pub struct SecretSpec {
    /// AES or generic secret.
    pub aes: bool,
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

impl Provisioner {
    /// Loads and initialises the module.
    pub fn new(module: &Path) -> Result<Self, HsmError> {
        let ctx = Pkcs11::new(module).map_err(|e| HsmError::Module {
            cluster: "provision".into(),
            module: module.to_path_buf(),
            detail: e.to_string(),
        })?;
        ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
            .map_err(pk("C_Initialize"))?;
        Ok(Provisioner { ctx })
    }

    /// Initialises a token with `label` in SoftHSM's free slot and sets its user PIN.
    pub fn init_token(&self, label: &str, so_pin: &SecretString, user_pin: &SecretString) -> Result<(), HsmError> {
        let slots = self.ctx.get_all_slots().map_err(pk("listing slots"))?;
        let mut free = None;
        for s in slots {
            let info = self.ctx.get_token_info(s).map_err(pk("reading token info"))?;
            if !info.token_initialized() {
                free = Some(s);
                break;
            }
        }
        let slot = free.ok_or_else(|| pk("finding a free slot")(cryptoki::error::Error::NotSupported))?;
        self.ctx.init_token(slot, so_pin, label).map_err(pk("C_InitToken"))?;
        let session = self.open(label)?;
        session.login(UserType::So, Some(so_pin)).map_err(pk("SO login"))?;
        session.init_pin(user_pin).map_err(pk("C_InitPIN"))?;
        session.logout().map_err(pk("SO logout"))?;
        Ok(())
    }

    fn open(&self, label: &str) -> Result<Session, HsmError> {
        // SoftHSM renumbers slots after C_InitToken: look the label up each time.
        for s in self.ctx.get_slots_with_token().map_err(pk("listing slots"))? {
            if self.ctx.get_token_info(s).map_err(pk("reading token info"))?.label() == label {
                return self.ctx.open_rw_session(s).map_err(pk("opening a session"));
            }
        }
        Err(pk("finding the token")(cryptoki::error::Error::NotSupported))
    }

    /// A user session on the token labelled `label`.
    pub fn user_session(&self, label: &str, pin: &SecretString) -> Result<Session, HsmError> {
        let s = self.open(label)?;
        s.login(UserType::User, Some(pin)).map_err(pk("user login"))?;
        Ok(s)
    }
}

/// Imports a domain (wrapping) key with a known value: how the demo and tests model
/// clusters cloned from one another. Not extractable, wrap/unwrap/encrypt only.
pub fn import_domain_key(s: &Session, label: &str, value: &Zeroizing<Vec<u8>>) -> Result<(), HsmError> {
    s.create_object(&[
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(CkKeyType::AES),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Wrap(true),
        Attribute::Unwrap(true),
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Value(value.to_vec()),
    ])
    .map_err(pk("importing the domain key"))?;
    Ok(())
}

/// Generates a secret key on the token (AES for encryption, generic secret for HMAC).
pub fn generate_secret(s: &Session, spec: &SecretSpec) -> Result<u64, HsmError> {
    let (mech, kt) = if spec.aes {
        (Mechanism::AesKeyGen, CkKeyType::AES)
    } else {
        (Mechanism::GenericSecretKeyGen, CkKeyType::GENERIC_SECRET)
    };
    let h = s
        .generate_key(
            &mech,
            &[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(kt),
                Attribute::ValueLen((spec.bytes as u64).into()),
                Attribute::Token(true),
                Attribute::Id(spec.id.clone()),
                Attribute::Label(spec.label.as_bytes().to_vec()),
                Attribute::Private(spec.private),
                Attribute::Sensitive(spec.sensitive),
                Attribute::Extractable(spec.extractable),
                Attribute::Encrypt(spec.aes),
                Attribute::Decrypt(spec.aes),
                Attribute::Sign(!spec.aes),
                Attribute::Verify(!spec.aes),
                Attribute::Wrap(false),
                Attribute::Unwrap(false),
                Attribute::Derive(false),
            ],
        )
        .map_err(pk("generating a key"))?;
    Ok(h.handle())
}

/// The secret keys with a given `CKA_ID`.
pub fn find_by_id(s: &Session, id: &[u8]) -> Result<Vec<ObjectHandle>, HsmError> {
    s.find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY), Attribute::Id(id.to_vec())])
        .map_err(pk("finding keys"))
}

/// `CKA_LABEL` of an object.
pub fn label_of(s: &Session, h: ObjectHandle) -> Result<String, HsmError> {
    let attrs = s
        .get_attributes(h, &[AttributeType::Label])
        .map_err(pk("reading the label"))?;
    Ok(attrs
        .into_iter()
        .find_map(|a| match a {
            Attribute::Label(l) => Some(String::from_utf8_lossy(&l).into_owned()),
            _ => None,
        })
        .unwrap_or_default())
}

/// Sets the label of an object (tests make attribute drift with it).
pub fn set_label(s: &Session, h: ObjectHandle, label: &str) -> Result<(), HsmError> {
    s.update_attributes(h, &[Attribute::Label(label.as_bytes().to_vec())])
        .map_err(pk("setting the label"))
}

/// The number of secret-key token objects, the domain key not counted.
pub fn count_secret_keys(s: &Session) -> Result<usize, HsmError> {
    let all = s
        .find_objects(&[Attribute::Token(true), Attribute::Class(ObjectClass::SECRET_KEY)])
        .map_err(pk("finding keys"))?;
    let mut n = 0;
    for h in all {
        if label_of(s, h)? != crate::plan::DEFAULT_DOMAIN_KEY {
            n += 1;
        }
    }
    Ok(n)
}
