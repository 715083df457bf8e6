//! SoftHSM provisioning for `demo` and the test fixture: a token directory with its own
//! `softhsm2.conf`, tokens initialised through PKCS#11 (`C_InitToken`, `C_InitPIN`), a
//! domain key shared by "cloned" tokens, and keys to sync. Never used against real HSMs.

use std::path::{Path, PathBuf};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType as CkKeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use secrecy::SecretString;
use sha2::Digest;
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

/// What every secret key made here carries besides its class, type and value: a token
/// object named by `spec`, for encryption (`cipher`) or HMAC, never a wrapping key.
fn secret_attributes(spec: &SecretSpec, cipher: bool) -> Vec<Attribute> {
    vec![
        Attribute::Token(true),
        Attribute::Id(spec.id.clone()),
        Attribute::Label(spec.label.as_bytes().to_vec()),
        Attribute::Private(spec.private),
        Attribute::Sensitive(spec.sensitive),
        Attribute::Extractable(spec.extractable),
        Attribute::Encrypt(cipher),
        Attribute::Decrypt(cipher),
        Attribute::Sign(!cipher),
        Attribute::Verify(!cipher),
        Attribute::Wrap(false),
        Attribute::Unwrap(false),
        Attribute::Derive(false),
    ]
}

/// Imports a secret key of a known value (tests that look for leaked key material need
/// to know it). Extractable and sensitive, like keys worth syncing.
pub fn import_secret(s: &Session, spec: &SecretSpec, value: &Zeroizing<Vec<u8>>) -> Result<u64, HsmError> {
    let kt = if spec.aes {
        CkKeyType::AES
    } else {
        CkKeyType::GENERIC_SECRET
    };
    let mut template = vec![Attribute::Class(ObjectClass::SECRET_KEY), Attribute::KeyType(kt)];
    template.extend(secret_attributes(spec, spec.aes));
    template.push(Attribute::Value(value.to_vec()));
    let h = s.create_object(&template).map_err(pk("importing a key"))?;
    Ok(h.handle())
}

/// Generates a secret key on the token (AES for encryption, generic secret for HMAC).
pub fn generate_secret(s: &Session, spec: &SecretSpec) -> Result<u64, HsmError> {
    let (mech, kt) = if spec.des3 {
        (Mechanism::Des3KeyGen, CkKeyType::DES3)
    } else if spec.aes {
        (Mechanism::AesKeyGen, CkKeyType::AES)
    } else {
        (Mechanism::GenericSecretKeyGen, CkKeyType::GENERIC_SECRET)
    };
    let mut template = vec![Attribute::Class(ObjectClass::SECRET_KEY), Attribute::KeyType(kt)];
    if !spec.des3 {
        template.push(Attribute::ValueLen((spec.bytes as u64).into()));
    }
    template.extend(secret_attributes(spec, spec.aes || spec.des3));
    let h = s.generate_key(&mech, &template).map_err(pk("generating a key"))?;
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

/// How many of hsm-sync's own data objects (state records, journals) the token holds.
pub fn count_data_objects(s: &Session) -> Result<usize, HsmError> {
    let found = s
        .find_objects(&[
            Attribute::Token(true),
            Attribute::Class(ObjectClass::DATA),
            Attribute::Application(super::state::APPLICATION.as_bytes().to_vec()),
        ])
        .map_err(pk("finding data objects"))?;
    Ok(found.len())
}

/// An RSA or EC key pair to create (same id and label on both halves).
#[derive(Debug, Clone)]
pub struct PairSpec {
    /// RSA modulus bits; `None` for EC.
    pub rsa_bits: Option<u64>,
    /// EC curve `p256`, `p384` or `ed25519` when `rsa_bits` is `None`.
    pub curve: String,
    /// `CKA_ID`.
    pub id: Vec<u8>,
    /// `CKA_LABEL`.
    pub label: String,
    /// `CKA_EXTRACTABLE` of the private half.
    pub extractable: bool,
}

/// DER `CKA_EC_PARAMS` (the named curve's OID) of a curve name.
pub fn curve_oid(curve: &str) -> Option<Vec<u8>> {
    match curve {
        "p256" => Some(vec![0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07]),
        "p384" => Some(vec![0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22]),
        // Ed25519 (RFC 8410): a key type hsm-sync does not sync, for tests of that.
        "ed25519" => Some(vec![0x06, 0x03, 0x2b, 0x65, 0x70]),
        _ => None,
    }
}

/// Generates a key pair on the token.
pub fn generate_pair(s: &Session, spec: &PairSpec) -> Result<(), HsmError> {
    let common = |private: bool| {
        vec![
            Attribute::Token(true),
            Attribute::Id(spec.id.clone()),
            Attribute::Label(spec.label.as_bytes().to_vec()),
            Attribute::Private(private),
        ]
    };
    let mut public = common(false);
    public.push(Attribute::Verify(true));
    let mut private = common(true);
    private.extend([
        Attribute::Sign(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(spec.extractable),
    ]);
    let mech = match spec.rsa_bits {
        Some(bits) => {
            public.extend([
                Attribute::ModulusBits(bits.into()),
                Attribute::PublicExponent(vec![1, 0, 1]),
                Attribute::Encrypt(true),
            ]);
            private.push(Attribute::Decrypt(true));
            Mechanism::RsaPkcsKeyPairGen
        }
        None => {
            let oid =
                curve_oid(&spec.curve).ok_or_else(|| pk("choosing a curve")(cryptoki::error::Error::NotSupported))?;
            public.push(Attribute::EcParams(oid));
            if spec.curve == "ed25519" {
                Mechanism::EccEdwardsKeyPairGen
            } else {
                Mechanism::EccKeyPairGen
            }
        }
    };
    s.generate_key_pair(&mech, &public, &private)
        .map_err(pk("generating a key pair"))?;
    Ok(())
}

fn find_class(s: &Session, class: ObjectClass, id: &[u8]) -> Result<ObjectHandle, HsmError> {
    match s
        .find_objects(&[Attribute::Class(class), Attribute::Id(id.to_vec())])
        .map_err(pk("finding keys"))?
        .as_slice()
    {
        [h] => Ok(*h),
        _ => Err(pk("finding exactly one key with that id")(
            cryptoki::error::Error::InvalidValue,
        )),
    }
}

fn is_ec(s: &Session, h: ObjectHandle) -> Result<bool, HsmError> {
    let attrs = s
        .get_attributes(h, &[AttributeType::KeyType])
        .map_err(pk("reading the key type"))?;
    Ok(attrs.iter().any(|a| matches!(a, Attribute::KeyType(CkKeyType::EC))))
}

/// Signs `message` with the private key of this id (RSA PKCS#1 v1.5 SHA-256, or ECDSA
/// over the SHA-256 digest).
pub fn sign(s: &Session, id: &[u8], message: &[u8]) -> Result<Vec<u8>, HsmError> {
    let h = find_class(s, ObjectClass::PRIVATE_KEY, id)?;
    if is_ec(s, h)? {
        let digest: [u8; 32] = sha2::Sha256::digest(message).into();
        s.sign(&Mechanism::Ecdsa, h, &digest).map_err(pk("signing"))
    } else {
        s.sign(&Mechanism::Sha256RsaPkcs, h, message).map_err(pk("signing"))
    }
}

/// Verifies a signature with the public key of this id.
pub fn verify(s: &Session, id: &[u8], message: &[u8], signature: &[u8]) -> Result<bool, HsmError> {
    let h = find_class(s, ObjectClass::PUBLIC_KEY, id)?;
    let r = if is_ec(s, h)? {
        let digest: [u8; 32] = sha2::Sha256::digest(message).into();
        s.verify(&Mechanism::Ecdsa, h, &digest, signature)
    } else {
        s.verify(&Mechanism::Sha256RsaPkcs, h, message, signature)
    };
    match r {
        Ok(()) => Ok(true),
        Err(cryptoki::error::Error::Pkcs11(cryptoki::error::RvError::SignatureInvalid, _)) => Ok(false),
        Err(e) => Err(pk("verifying")(e)),
    }
}

/// Sets boolean usage attributes of the key(s) with this id (tests make drift with it).
pub fn set_flags(s: &Session, id: &[u8], class: ObjectClass, attrs: &[Attribute]) -> Result<(), HsmError> {
    let h = find_class(s, class, id)?;
    s.update_attributes(h, attrs).map_err(pk("setting attributes"))
}

/// Replaces the key(s) with this id by a copy with a new label and `CKA_MODIFIABLE`
/// false (`C_CopyObject`; MODIFIABLE cannot be changed in place): tests make an
/// unmodifiable, drifted copy with it.
pub fn freeze(s: &Session, id: &[u8], class: ObjectClass, label: &str) -> Result<(), HsmError> {
    let h = find_class(s, class, id)?;
    s.copy_object(
        h,
        &[
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Modifiable(false),
        ],
    )
    .map_err(pk("copying the object"))?;
    s.destroy_object(h).map_err(pk("destroying the original"))
}
