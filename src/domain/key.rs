//! Keys in domain terms: what inventory reads, the diff compares and the report prints.
//! No PKCS#11 types here, so the diff stays pure and testable without a token.

use serde::{Deserialize, Serialize};

use super::fingerprint::Fingerprint;
use super::handle::Handle;

/// PKCS#11 object class of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyClass {
    /// `CKO_SECRET_KEY`
    SecretKey,
    /// `CKO_PRIVATE_KEY`
    PrivateKey,
    /// `CKO_PUBLIC_KEY`
    PublicKey,
}

/// Key type, as far as hsm-sync distinguishes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyType {
    /// `CKK_AES`
    Aes,
    /// `CKK_GENERIC_SECRET` (HMAC keys)
    GenericSecret,
    /// `CKK_DES3`
    Des3,
    /// `CKK_RSA`
    Rsa,
    /// `CKK_EC`
    Ec,
    /// Anything else.
    Other,
    /// `CKK_SHA_1_HMAC`. The HMAC key types (YubiHSM, Kryoptic, kmsp11, opencryptoki ≥
    /// 3.26 name HMAC keys so) travel as generic secrets do, and a copy keeps its source's
    /// type (CONTRACT §3). cryptoki 0.12 gives `CKK_SHA224/384/512_HMAC` the value of
    /// `CKK_SHA256_HMAC`, so `hsm/` reads and writes every key type raw (PKCS11-NOTES.md).
    #[serde(rename = "sha1-hmac")]
    Sha1Hmac,
    /// `CKK_SHA256_HMAC`
    #[serde(rename = "sha256-hmac")]
    Sha256Hmac,
    /// `CKK_SHA224_HMAC`
    #[serde(rename = "sha224-hmac")]
    Sha224Hmac,
    /// `CKK_SHA384_HMAC`
    #[serde(rename = "sha384-hmac")]
    Sha384Hmac,
    /// `CKK_SHA512_HMAC`
    #[serde(rename = "sha512-hmac")]
    Sha512Hmac,
    /// `CKK_EC_EDWARDS` (Ed25519, Ed448): named, so a plan says why it is not copied
    /// (`no-common-mechanism`: no token here can wrap one; CONTRACT §3).
    EcEdwards,
    /// `CKK_EC_MONTGOMERY` (X25519, X448): as [`KeyType::EcEdwards`].
    EcMontgomery,
}

impl KeyClass {
    /// Every class, in declaration order: what the report's schema lists.
    pub const ALL: [KeyClass; 3] = [KeyClass::SecretKey, KeyClass::PrivateKey, KeyClass::PublicKey];

    /// The stable one-byte code fingerprints and digests are built from. Written out, not
    /// `as u8`: reordering the enum must never change a fingerprint.
    pub const fn code(self) -> u8 {
        match self {
            KeyClass::SecretKey => 0,
            KeyClass::PrivateKey => 1,
            KeyClass::PublicKey => 2,
        }
    }

    /// The class as the in-flight journal (version 1) names it.
    const fn journal_name(self) -> &'static str {
        match self {
            KeyClass::SecretKey => "SecretKey",
            KeyClass::PrivateKey => "PrivateKey",
            KeyClass::PublicKey => "PublicKey",
        }
    }
}

impl KeyType {
    /// Every key type, in declaration order: what the report's schema lists.
    pub const ALL: [KeyType; 13] = [
        KeyType::Aes,
        KeyType::GenericSecret,
        KeyType::Des3,
        KeyType::Rsa,
        KeyType::Ec,
        KeyType::Other,
        KeyType::Sha1Hmac,
        KeyType::Sha256Hmac,
        KeyType::Sha224Hmac,
        KeyType::Sha384Hmac,
        KeyType::Sha512Hmac,
        KeyType::EcEdwards,
        KeyType::EcMontgomery,
    ];

    /// The stable one-byte code fingerprints and digests are built from (never reordered;
    /// a new type takes a new code).
    pub const fn code(self) -> u8 {
        match self {
            KeyType::Aes => 0,
            KeyType::GenericSecret => 1,
            KeyType::Des3 => 2,
            KeyType::Rsa => 3,
            KeyType::Ec => 4,
            KeyType::Other => 5,
            KeyType::Sha1Hmac => 6,
            KeyType::Sha224Hmac => 7,
            KeyType::Sha256Hmac => 8,
            KeyType::Sha384Hmac => 9,
            KeyType::Sha512Hmac => 10,
            KeyType::EcEdwards => 11,
            KeyType::EcMontgomery => 12,
        }
    }

    /// Its name in reports and details, as serde spells it (`aes`, `sha256-hmac`).
    pub const fn name(self) -> &'static str {
        match self {
            KeyType::Aes => "aes",
            KeyType::GenericSecret => "generic-secret",
            KeyType::Des3 => "des3",
            KeyType::Rsa => "rsa",
            KeyType::Ec => "ec",
            KeyType::Other => "other",
            KeyType::Sha1Hmac => "sha1-hmac",
            KeyType::Sha224Hmac => "sha224-hmac",
            KeyType::Sha256Hmac => "sha256-hmac",
            KeyType::Sha384Hmac => "sha384-hmac",
            KeyType::Sha512Hmac => "sha512-hmac",
            KeyType::EcEdwards => "ec-edwards",
            KeyType::EcMontgomery => "ec-montgomery",
        }
    }
}

/// The boolean attributes hsm-sync reads and reproduces.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct KeyFlags {
    pub private: bool,
    pub sensitive: bool,
    pub extractable: bool,
    pub encrypt: bool,
    pub decrypt: bool,
    pub sign: bool,
    pub verify: bool,
    pub wrap: bool,
    pub unwrap: bool,
    pub derive: bool,
    pub sign_recover: bool,
    pub verify_recover: bool,
    pub modifiable: bool,
}

impl KeyFlags {
    /// The flags as a bit mask with a fixed position per flag: the explicit encoding that
    /// digests use. A new flag takes the next free bit.
    pub fn bits(&self) -> u16 {
        [
            self.private,
            self.sensitive,
            self.extractable,
            self.encrypt,
            self.decrypt,
            self.sign,
            self.verify,
            self.wrap,
            self.unwrap,
            self.derive,
            self.sign_recover,
            self.verify_recover,
            self.modifiable,
        ]
        .iter()
        .enumerate()
        .fold(0u16, |acc, (bit, on)| acc | (u16::from(*on) << bit))
    }
}

/// The usage flags of a key as one short string, e.g. `E D S V`.
impl std::fmt::Display for KeyFlags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts = [
            (self.encrypt, "encrypt"),
            (self.decrypt, "decrypt"),
            (self.sign, "sign"),
            (self.verify, "verify"),
            (self.wrap, "wrap"),
            (self.unwrap, "unwrap"),
            (self.derive, "derive"),
        ];
        let on: Vec<&str> = parts.iter().filter(|(b, _)| *b).map(|(_, n)| *n).collect();
        f.write_str(&on.join(","))
    }
}

/// Public attributes of an asymmetric key: what a public key is made of on the target,
/// and what its fingerprint covers. Empty for secret keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublicParts {
    /// RSA `CKA_MODULUS`.
    pub modulus: Vec<u8>,
    /// RSA `CKA_PUBLIC_EXPONENT`.
    pub public_exponent: Vec<u8>,
    /// EC `CKA_EC_PARAMS` (the curve, DER).
    pub ec_params: Vec<u8>,
    /// EC `CKA_EC_POINT` (public keys only).
    pub ec_point: Vec<u8>,
}

/// One key object on a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyObject {
    /// The object handle on its token (valid for this run only).
    pub handle: Handle,
    /// Object class.
    pub class: KeyClass,
    /// Key type.
    pub key_type: KeyType,
    /// `CKA_ID` (inline up to 16 bytes).
    pub id: smallvec::SmallVec<[u8; 16]>,
    /// `CKA_LABEL` (inline up to 24 bytes).
    pub label: compact_str::CompactString,
    /// Boolean attributes.
    pub flags: KeyFlags,
    /// `CKA_VALUE_LEN` where the token reports one (0 on SoftHSM for unwrapped keys).
    pub value_len: Option<u64>,
    /// Public attributes (asymmetric keys; `None` for secret keys: boxed, as 96 empty
    /// bytes per secret key were ~10 MB at 100,000 keys; issue 6). Read with
    /// [`KeyObject::public`].
    pub public_parts: Option<Box<PublicParts>>,
    /// Digest proving the key material without revealing it, or why there is none.
    pub fingerprint: Fingerprint,
}

/// How keys are matched across clusters: class + `CKA_ID`, or class + `CKA_LABEL` when
/// the id is empty (CONTRACT.md §1).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Identity {
    /// By id.
    Id(KeyClass, Vec<u8>),
    /// By label, for keys without an id.
    Label(KeyClass, String),
}

impl Identity {
    /// The one stable text form of an identity, as the in-flight journal on target tokens
    /// holds it: `CLASS/id:HEX` or `CLASS/label:HEX`. This is version 1 of the encoding,
    /// spelt out so that journals left by earlier runs are still recognised.
    pub fn journal_key(&self) -> String {
        match self {
            Identity::Id(c, id) => format!("{}/id:{}", c.journal_name(), hex::encode(id)),
            Identity::Label(c, l) => format!("{}/label:{}", c.journal_name(), hex::encode(l.as_bytes())),
        }
    }
}

impl KeyObject {
    /// The cross-cluster identity of this key.
    pub fn identity(&self) -> Identity {
        if self.id.is_empty() {
            Identity::Label(self.class, self.label.to_string())
        } else {
            Identity::Id(self.class, self.id.to_vec())
        }
    }

    /// Its public attributes (empty for a secret key).
    pub fn public(&self) -> &PublicParts {
        static NONE: PublicParts = PublicParts {
            modulus: Vec::new(),
            public_exponent: Vec::new(),
            ec_params: Vec::new(),
            ec_point: Vec::new(),
        };
        self.public_parts.as_deref().unwrap_or(&NONE)
    }

    /// Its identity, borrowed: what sets of identities built per diff hold (no copies of
    /// ids and labels; issue 6, memory).
    pub fn identity_ref(&self) -> IdentityRef<'_> {
        if self.id.is_empty() {
            IdentityRef(self.class, false, self.label.as_bytes())
        } else {
            IdentityRef(self.class, true, &self.id)
        }
    }

    /// How this key's identity compares with `id`, in [`Identity`]'s order, without
    /// building it (inventories are sorted and searched by identity).
    pub fn cmp_identity(&self, id: &Identity) -> std::cmp::Ordering {
        use std::cmp::Ordering;
        match (self.id.is_empty(), id) {
            (false, Identity::Id(c, v)) => (self.class, self.id.as_slice()).cmp(&(*c, v.as_slice())),
            (false, Identity::Label(..)) => Ordering::Less,
            (true, Identity::Id(..)) => Ordering::Greater,
            (true, Identity::Label(c, l)) => (self.class, self.label.as_str()).cmp(&(*c, l.as_str())),
        }
    }

    /// How two keys' identities compare, in [`Identity`]'s order, without building them.
    pub fn cmp_by_identity(&self, other: &KeyObject) -> std::cmp::Ordering {
        use std::cmp::Ordering;
        match (self.id.is_empty(), other.id.is_empty()) {
            (false, false) => (self.class, self.id.as_slice()).cmp(&(other.class, other.id.as_slice())),
            (false, true) => Ordering::Less,
            (true, false) => Ordering::Greater,
            (true, true) => (self.class, self.label.as_str()).cmp(&(other.class, other.label.as_str())),
        }
    }

    /// The report's view of this key.
    pub fn key_ref(&self) -> KeyRef {
        KeyRef {
            id: hex::encode(&self.id),
            label: self.label.to_string(),
            class: Some(self.class),
            key_type: Some(self.key_type),
            handle: Some(self.handle),
        }
    }
}

/// A key's [`Identity`] borrowed from it: class, whether by id, and the id or label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IdentityRef<'a>(KeyClass, bool, &'a [u8]);

/// A key as the report and diff name it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRef {
    /// `CKA_ID` in hex (empty when the key has none).
    pub id: String,
    /// `CKA_LABEL`.
    pub label: String,
    /// Object class (absent when the key was not found).
    pub class: Option<KeyClass>,
    /// Key type (absent when the key was not found).
    pub key_type: Option<KeyType>,
    /// Object handle on the source, where the key exists there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handle: Option<Handle>,
}

/// Sorts keys by identity, then handle: the order inventories are kept in.
pub fn sort_keys<K: std::borrow::Borrow<KeyObject>>(keys: &mut [K]) {
    // Handles are unique, so the order is total and an unstable sort (no buffer of half
    // the keys) gives the same result as a stable one.
    keys.sort_unstable_by(|a, b| {
        let (a, b) = (a.borrow(), b.borrow());
        a.cmp_by_identity(b).then(a.handle.cmp(&b.handle))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_types_name_is_its_serialized_name() {
        for t in KeyType::ALL {
            assert_eq!(serde_json::to_value(t).unwrap(), t.name(), "{t:?}");
        }
    }

    #[test]
    fn persisted_encodings_are_spelt_out() {
        // These values are in fingerprints, digests and journals on tokens: changing one
        // is a format change, never a refactor.
        assert_eq!(KeyClass::ALL.map(KeyClass::code), [0, 1, 2]);
        assert_eq!(
            KeyType::ALL.map(KeyType::code),
            [0, 1, 2, 3, 4, 5, 6, 8, 7, 9, 10, 11, 12]
        );
        assert_eq!(
            Identity::Id(KeyClass::SecretKey, vec![0xa1]).journal_key(),
            "SecretKey/id:a1"
        );
        assert_eq!(
            Identity::Label(KeyClass::PublicKey, "k".into()).journal_key(),
            "PublicKey/label:6b"
        );
        let f = KeyFlags {
            private: true,
            modifiable: true,
            ..Default::default()
        };
        assert_eq!(f.bits(), 1 | 1 << 12);
    }
}
