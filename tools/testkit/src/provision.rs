//! SoftHSM provisioning for the tests and benchmarks: what `hsm-sync demo` does (re-exported
//! from [`hsm_sync::hsm::softhsm`]) plus what only tests need: keys of a known value, key
//! pairs, signatures, HMACs, drift (labels, flags, unmodifiable copies) and counts. Never
//! used against real HSMs.

use std::path::{Path, PathBuf};

use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType as CkKeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use hsm_sync::domain::handle::Handle;
use hsm_sync::domain::key::KeyType;
use hsm_sync::hsm::softhsm::provision_error as pk;
use hsm_sync::hsm::HsmError;
use sha2::Digest;
use zeroize::Zeroizing;

pub use hsm_sync::hsm::softhsm::{
    generate_secret, import_domain_key, softhsm_module, write_conf, Provisioner, SecretSpec, SOFTHSM_PATHS,
};

/// Where Debian and others install NSS softokn, the suite's third PKCS#11 implementation.
pub const NSS_PATHS: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu/libsoftokn3.so",
    "/usr/lib/aarch64-linux-gnu/libsoftokn3.so",
    "/usr/lib64/libsoftokn3.so",
    "/usr/lib/libsoftokn3.so",
];

/// NSS softokn's module: `$HSM_SYNC_NSS_MODULE`, else the first standard path present.
pub fn nss_module() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("HSM_SYNC_NSS_MODULE") {
        return Some(PathBuf::from(p));
    }
    NSS_PATHS.iter().map(PathBuf::from).find(|p| p.exists())
}

/// The label of the token an NSS database is (softokn's key-and-certificate slot, id 2;
/// slot 1, "NSS Generic Crypto Services", holds no keys and has no login).
pub const NSS_TOKEN_LABEL: &str = "NSS Certificate DB";

/// `C_Initialize`'s pReserved string (a plan's `module_args`) that opens the NSS
/// database in `db` (made by `certutil -N -d sql:DB`). NSS softokn refuses a NULL one
/// with `CKR_ARGUMENTS_BAD`; it takes one database per process (PKCS11-NOTES.md).
pub fn nss_module_args(db: &Path) -> String {
    format!(
        "configdir='sql:{}' certPrefix='' keyPrefix='' secmod='secmod.db' flags=",
        db.display()
    )
}

/// Imports a secret key of a known value (tests that look for leaked key material need
/// to know it). Its flags are the spec's, like keys worth syncing.
pub fn import_secret(s: &Session, spec: &SecretSpec, value: &Zeroizing<Vec<u8>>) -> Result<u64, HsmError> {
    let mut template = spec.template();
    template.push(Attribute::Value(value.to_vec()));
    let h = s.create_object(&template).map_err(pk("importing a key"))?;
    Ok(h.handle())
}

/// The HMAC key type named `sha1` … `sha512`.
pub fn hmac_key_type(name: &str) -> Option<KeyType> {
    Some(match name {
        "sha1" => KeyType::Sha1Hmac,
        "sha224" => KeyType::Sha224Hmac,
        "sha256" => KeyType::Sha256Hmac,
        "sha384" => KeyType::Sha384Hmac,
        "sha512" => KeyType::Sha512Hmac,
        _ => return None,
    })
}

/// Imports an HMAC key of type `key_type` (sign/verify only, private, sensitive). Through
/// the provisioner's raw call: cryptoki 0.12 would send `CKK_SHA256_HMAC` for the
/// SHA-224/384/512 types.
pub fn import_hmac_key(
    p: &Provisioner,
    s: &Session,
    key_type: KeyType,
    id: &[u8],
    label: &str,
    extractable: bool,
    value: &Zeroizing<Vec<u8>>,
) -> Result<u64, HsmError> {
    let h = p.create_key(
        s,
        key_type,
        &[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Token(true),
            Attribute::Id(id.to_vec()),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(extractable),
            Attribute::Sign(true),
            Attribute::Verify(true),
            Attribute::Encrypt(false),
            Attribute::Decrypt(false),
            Attribute::Wrap(false),
            Attribute::Unwrap(false),
            Attribute::Derive(false),
            Attribute::Value(value.to_vec()),
        ],
    )?;
    Ok(h.number())
}

/// The `CKA_KEY_TYPE` of an object as the token holds it (read raw: cryptoki 0.12 reads
/// `CKK_SHA224/384/512_HMAC` as `CKK_SHA256_HMAC`).
pub fn raw_key_type(p: &Provisioner, s: &Session, h: ObjectHandle) -> Result<u64, HsmError> {
    p.raw_key_type(s, Handle::claimed(h.handle()))
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

/// Every token object as (class, id, label): what an interrupted run may have left
/// (objects with neither id nor label are what a killed `C_UnwrapKey` leaves on SoftHSM).
pub fn objects(s: &Session) -> Result<Vec<(String, Vec<u8>, String)>, HsmError> {
    let mut out = Vec::new();
    for h in s
        .find_objects(&[Attribute::Token(true)])
        .map_err(pk("finding objects"))?
    {
        let attrs = s
            .get_attributes(h, &[AttributeType::Class, AttributeType::Id, AttributeType::Label])
            .map_err(pk("reading an object"))?;
        let (mut class, mut id, mut label) = (String::new(), Vec::new(), String::new());
        for a in attrs {
            match a {
                Attribute::Class(c) => class = c.to_string(),
                Attribute::Id(v) => id = v,
                Attribute::Label(l) => label = String::from_utf8_lossy(&l).into_owned(),
                _ => {}
            }
        }
        out.push((class, id, label));
    }
    Ok(out)
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
        if label_of(s, h)? != hsm_sync::plan::DEFAULT_DOMAIN_KEY {
            n += 1;
        }
    }
    Ok(n)
}

/// Writes a lifecycle record the way hsm-sync before issue 15 did: one private data
/// object per key, `hsm-sync/state/secret-key/<id-hex>`, its JSON in `CKA_VALUE`, the
/// event `synced` at `at` (RFC 3339) under sync `sync` from `source` to `targets`.
pub fn write_legacy_record(
    s: &Session,
    id: &[u8],
    label: &str,
    at: &str,
    sync: &str,
    source: &str,
    targets: &[String],
) -> Result<(), HsmError> {
    let record = serde_json::json!({
        "version": 1, "event": "synced", "at": at, "notified_at": null,
        "sync": sync, "source": source, "targets": targets,
        "key": {"id": hex::encode(id), "label": label, "class": "secret-key", "key_type": "aes", "fingerprint": null},
    });
    s.create_object(&[
        Attribute::Class(ObjectClass::DATA),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Modifiable(true),
        Attribute::Application(hsm_sync::hsm::APPLICATION.as_bytes().to_vec()),
        Attribute::Label(format!("hsm-sync/state/secret-key/{}", hex::encode(id)).into_bytes()),
        Attribute::Value(record.to_string().into_bytes()),
    ])
    .map_err(pk("writing a legacy record"))?;
    Ok(())
}

/// Every secret key on the token but the domain key, as (id, label).
pub fn secret_keys(s: &Session) -> Result<Vec<(Vec<u8>, String)>, HsmError> {
    let all = s
        .find_objects(&[Attribute::Token(true), Attribute::Class(ObjectClass::SECRET_KEY)])
        .map_err(pk("finding keys"))?;
    let mut out = Vec::new();
    for h in all {
        let label = label_of(s, h)?;
        if label == hsm_sync::plan::DEFAULT_DOMAIN_KEY {
            continue;
        }
        let id = s
            .get_attributes(h, &[cryptoki::object::AttributeType::Id])
            .map_err(pk("reading an id"))?
            .into_iter()
            .find_map(|a| match a {
                Attribute::Id(v) => Some(v),
                _ => None,
            })
            .unwrap_or_default();
        out.push((id, label));
    }
    Ok(out)
}

/// How many of hsm-sync's own data objects (state records, journals) the token holds.
pub fn count_data_objects(s: &Session) -> Result<usize, HsmError> {
    let found = s
        .find_objects(&[
            Attribute::Token(true),
            Attribute::Class(ObjectClass::DATA),
            Attribute::Application(hsm_sync::hsm::APPLICATION.as_bytes().to_vec()),
        ])
        .map_err(pk("finding data objects"))?;
    Ok(found.len())
}

/// An HMAC of `data` under the secret key `h` whose raw `CKA_KEY_TYPE` is `key_type`: a
/// `CKK_SHA224/384/512_HMAC` key with its own mechanism (strict tokens refuse any other),
/// any other key with SHA-1, or SHA-256 where the token refuses the key's size for SHA-1,
/// as hsm-sync verifies copies. `None` when the key fits none of them.
pub fn hmac(s: &Session, h: ObjectHandle, key_type: u64, data: &[u8]) -> Result<Option<Vec<u8>>, HsmError> {
    // The order hsm-sync's own HMAC proof uses: the same mechanism on every make.
    let mechanisms: &[Mechanism] = match key_type {
        0x2E => &[Mechanism::Sha224Hmac],
        0x2C => &[Mechanism::Sha384Hmac],
        0x2D => &[Mechanism::Sha512Hmac],
        _ => &[Mechanism::Sha1Hmac, Mechanism::Sha256Hmac],
    };
    for mech in mechanisms {
        match s.sign(mech, h, data) {
            Ok(mac) => return Ok(Some(mac)),
            // Too short for this mechanism, or an HMAC key type made for the other one.
            Err(CkError::Pkcs11(RvError::KeySizeRange | RvError::KeyTypeInconsistent, _)) => continue,
            Err(e) => return Err(pk("computing an HMAC")(e)),
        }
    }
    Ok(None)
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
        // Ed25519 (RFC 8410), by CKM_EC_EDWARDS_KEY_PAIR_GEN: SoftHSM makes it, and the
        // Kryoptic of `build::kryoptic_eddsa` (not `build::kryoptic`'s, which has no EdDSA).
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
            let oid = curve_oid(&spec.curve).ok_or_else(|| pk("choosing a curve")(CkError::NotSupported))?;
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
        _ => Err(pk("finding exactly one key with that id")(CkError::InvalidValue)),
    }
}

/// The mechanism `sign` and `verify` use for the key `h`, by its `CKA_KEY_TYPE`, and the
/// data it takes for `message`: ECDSA over the SHA-256 digest for EC keys, Ed25519 (pure
/// `CKM_EDDSA`, no parameters) over the message itself for Edwards-curve keys, RSA PKCS#1
/// v1.5 with SHA-256 for the rest.
fn signing(s: &Session, h: ObjectHandle, message: &[u8]) -> Result<(Mechanism<'static>, Vec<u8>), HsmError> {
    let attrs = s
        .get_attributes(h, &[AttributeType::KeyType])
        .map_err(pk("reading the key type"))?;
    let key_type = attrs.iter().find_map(|a| match a {
        Attribute::KeyType(t) => Some(*t),
        _ => None,
    });
    Ok(match key_type {
        Some(CkKeyType::EC) => (Mechanism::Ecdsa, sha2::Sha256::digest(message).to_vec()),
        Some(CkKeyType::EC_EDWARDS) => (
            Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)),
            message.to_vec(),
        ),
        _ => (Mechanism::Sha256RsaPkcs, message.to_vec()),
    })
}

/// Signs `message` with the private key of this id (see [`signing`] for the mechanism).
pub fn sign(s: &Session, id: &[u8], message: &[u8]) -> Result<Vec<u8>, HsmError> {
    let h = find_class(s, ObjectClass::PRIVATE_KEY, id)?;
    let (mechanism, data) = signing(s, h, message)?;
    s.sign(&mechanism, h, &data).map_err(pk("signing"))
}

/// Verifies a signature with the public key of this id.
pub fn verify(s: &Session, id: &[u8], message: &[u8], signature: &[u8]) -> Result<bool, HsmError> {
    let h = find_class(s, ObjectClass::PUBLIC_KEY, id)?;
    let (mechanism, data) = signing(s, h, message)?;
    match s.verify(&mechanism, h, &data, signature) {
        Ok(()) => Ok(true),
        Err(CkError::Pkcs11(RvError::SignatureInvalid, _)) => Ok(false),
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

/// Writes `DIR/kryoptic.toml`: one sqlite slot per token, numbered from 1 in order, each
/// database `DIR/kryoptic/NAME.sql`, with the mechanisms it must deny (Kryoptic's
/// `mechanisms = ["DENY", …]` slot option: a "vendor personality"). Returns the path,
/// for `KRYOPTIC_CONF`.
pub fn write_kryoptic_conf(dir: &Path, slots: &[(&str, &[&str])]) -> std::io::Result<PathBuf> {
    let db = dir.join("kryoptic");
    std::fs::create_dir_all(&db)?;
    let mut conf = String::new();
    for (i, (name, deny)) in slots.iter().enumerate() {
        conf.push_str(&format!(
            "[[slots]]\nslot = {}\ndbtype = \"sqlite\"\ndbargs = \"{}\"\n",
            i + 1,
            db.join(format!("{name}.sql")).display()
        ));
        if !deny.is_empty() {
            let list: Vec<String> = deny.iter().map(|m| format!("\"{m}\"")).collect();
            conf.push_str(&format!("mechanisms = [\"DENY\", {}]\n", list.join(", ")));
        }
        conf.push('\n');
    }
    let path = dir.join("kryoptic.toml");
    std::fs::write(&path, conf)?;
    Ok(path)
}
