//! The attribute table: which attributes hsm-sync reads per key, and how long a buffer
//! each is read into, so that one raw `C_GetAttributeValue` fetches them all (cryptoki's
//! `get_attributes` asks for the sizes first: two calls, PKCS11-NOTES.md). One table, so
//! the inventory and the benchmark's raw baseline read exactly the same.
//!
//! Beside it, the maps between PKCS#11's classes, key types (as raw `CKK_*` numbers) and
//! usage attributes and the domain's, used both when keys are read and when copies are
//! made, and the HMAC mechanisms each key type proves its copies with.

use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType as CkKeyType, ObjectClass};
use cryptoki_sys::CK_KEY_TYPE;

use crate::domain::key::{KeyClass, KeyFlags, KeyType};

/// `sizeof(CK_ULONG)`: the length of a class, a key type or `CKA_VALUE_LEN`.
const ULONG: usize = std::mem::size_of::<cryptoki_sys::CK_ULONG>();

/// Every attribute read per key, with the length of the buffer its value is read into:
/// fixed sizes for numbers and flags, generous ones for the variable-length attributes
/// (ids and labels of any sensible length, RSA moduli up to 8192 bits, EC points up to
/// P-521 and beyond). A value that does not fit falls back to cryptoki's two calls.
///
/// Not `CKA_KEY_GEN_MECHANISM`: SoftHSM answers "unavailable" for unwrapped keys and
/// cryptoki then fails the whole call.
pub const KEY_ATTRIBUTES: [(AttributeType, usize); 22] = [
    (AttributeType::Class, ULONG),
    (AttributeType::KeyType, ULONG),
    (AttributeType::Id, 128),
    (AttributeType::Label, 256),
    (AttributeType::Private, 1),
    (AttributeType::Sensitive, 1),
    (AttributeType::Extractable, 1),
    (AttributeType::Encrypt, 1),
    (AttributeType::Decrypt, 1),
    (AttributeType::Sign, 1),
    (AttributeType::Verify, 1),
    (AttributeType::Wrap, 1),
    (AttributeType::Unwrap, 1),
    (AttributeType::Derive, 1),
    (AttributeType::SignRecover, 1),
    (AttributeType::VerifyRecover, 1),
    (AttributeType::Modifiable, 1),
    (AttributeType::ValueLen, ULONG),
    (AttributeType::Modulus, 1024),
    (AttributeType::PublicExponent, 16),
    (AttributeType::EcParams, 128),
    (AttributeType::EcPoint, 256),
];

/// The attributes of [`KEY_ATTRIBUTES`], in its order, then `CKA_UNIQUE_ID` (PKCS#11 3.0)
/// for tokens that keep one: the fingerprint cache's key, read in the same call as the rest
/// (issue 15: a call of its own per key was a third of `plan` on Kryoptic). Also what
/// cryptoki is asked for when the one-call read does not fit.
pub(crate) const KEY_ATTRIBUTE_TYPES_UID: [AttributeType; KEY_ATTRIBUTES.len() + 1] = {
    let mut out = [AttributeType::UniqueId; KEY_ATTRIBUTES.len() + 1];
    let mut i = 0;
    while i < KEY_ATTRIBUTES.len() {
        out[i] = KEY_ATTRIBUTES[i].0;
        i += 1;
    }
    out
};

/// The buffer lengths of [`KEY_ATTRIBUTE_TYPES_UID`]: a unique id is a short string
/// (Kryoptic's are UUIDs, 36 bytes).
pub(crate) const KEY_ATTRIBUTE_LENS_UID: [usize; KEY_ATTRIBUTES.len() + 1] = {
    let mut out = [64; KEY_ATTRIBUTES.len() + 1];
    let mut i = 0;
    while i < KEY_ATTRIBUTES.len() {
        out[i] = KEY_ATTRIBUTES[i].1;
        i += 1;
    }
    out
};

/// [`KEY_ATTRIBUTES`]' attributes alone, without the unique id.
pub(crate) const KEY_ATTRIBUTE_TYPES: &[AttributeType] = KEY_ATTRIBUTE_TYPES_UID.split_at(KEY_ATTRIBUTES.len()).0;

/// The buffer lengths of [`KEY_ATTRIBUTE_TYPES`].
pub(crate) const KEY_ATTRIBUTE_LENS: &[usize] = KEY_ATTRIBUTE_LENS_UID.split_at(KEY_ATTRIBUTES.len()).0;

/// The buffer length [`KEY_ATTRIBUTES`] gives `attribute`, if hsm-sync reads it per key.
pub fn read_len(attribute: AttributeType) -> Option<usize> {
    KEY_ATTRIBUTES.iter().find(|(t, _)| *t == attribute).map(|(_, n)| *n)
}

/// The domain class of a PKCS#11 object class; `None` for objects that are no keys.
pub(crate) fn class_of(c: ObjectClass) -> Option<KeyClass> {
    match c {
        ObjectClass::SECRET_KEY => Some(KeyClass::SecretKey),
        ObjectClass::PRIVATE_KEY => Some(KeyClass::PrivateKey),
        ObjectClass::PUBLIC_KEY => Some(KeyClass::PublicKey),
        _ => None,
    }
}

/// The PKCS#11 object class of a domain key class.
pub(crate) fn ck_class(c: KeyClass) -> ObjectClass {
    match c {
        KeyClass::SecretKey => ObjectClass::SECRET_KEY,
        KeyClass::PrivateKey => ObjectClass::PRIVATE_KEY,
        KeyClass::PublicKey => ObjectClass::PUBLIC_KEY,
    }
}

/// The domain key type of a raw `CKK_*` value (`Other` for those hsm-sync cannot copy).
///
/// Raw, not cryptoki's `KeyType`: cryptoki 0.12's `SHA224_HMAC`, `SHA384_HMAC` and
/// `SHA512_HMAC` all carry the value of `CKK_SHA256_HMAC` (PKCS11-NOTES.md), so only the
/// number the token gave tells them apart.
pub(crate) fn type_of_raw(t: CK_KEY_TYPE) -> KeyType {
    match t {
        cryptoki_sys::CKK_AES => KeyType::Aes,
        cryptoki_sys::CKK_GENERIC_SECRET => KeyType::GenericSecret,
        cryptoki_sys::CKK_DES3 => KeyType::Des3,
        cryptoki_sys::CKK_RSA => KeyType::Rsa,
        cryptoki_sys::CKK_EC => KeyType::Ec,
        cryptoki_sys::CKK_SHA_1_HMAC => KeyType::Sha1Hmac,
        cryptoki_sys::CKK_SHA224_HMAC => KeyType::Sha224Hmac,
        cryptoki_sys::CKK_SHA256_HMAC => KeyType::Sha256Hmac,
        cryptoki_sys::CKK_SHA384_HMAC => KeyType::Sha384Hmac,
        cryptoki_sys::CKK_SHA512_HMAC => KeyType::Sha512Hmac,
        cryptoki_sys::CKK_EC_EDWARDS => KeyType::EcEdwards,
        cryptoki_sys::CKK_EC_MONTGOMERY => KeyType::EcMontgomery,
        _ => KeyType::Other,
    }
}

/// The domain key type of a key type as cryptoki read it. A SHA-224/384/512 HMAC key
/// reads as `Sha256Hmac` here: the session confirms that one raw (`TokenSession::read_key`).
pub(crate) fn type_of(t: CkKeyType) -> KeyType {
    type_of_raw(t.into())
}

/// The raw `CKK_*` value of a domain key type, as templates send it (raw: see
/// [`type_of_raw`]); `None` for `Other`.
pub(crate) fn ck_key_type(t: KeyType) -> Option<CK_KEY_TYPE> {
    Some(match t {
        KeyType::Aes => cryptoki_sys::CKK_AES,
        KeyType::GenericSecret => cryptoki_sys::CKK_GENERIC_SECRET,
        KeyType::Des3 => cryptoki_sys::CKK_DES3,
        KeyType::Rsa => cryptoki_sys::CKK_RSA,
        KeyType::Ec => cryptoki_sys::CKK_EC,
        KeyType::Sha1Hmac => cryptoki_sys::CKK_SHA_1_HMAC,
        KeyType::Sha224Hmac => cryptoki_sys::CKK_SHA224_HMAC,
        KeyType::Sha256Hmac => cryptoki_sys::CKK_SHA256_HMAC,
        KeyType::Sha384Hmac => cryptoki_sys::CKK_SHA384_HMAC,
        KeyType::Sha512Hmac => cryptoki_sys::CKK_SHA512_HMAC,
        KeyType::EcEdwards => cryptoki_sys::CKK_EC_EDWARDS,
        KeyType::EcMontgomery => cryptoki_sys::CKK_EC_MONTGOMERY,
        KeyType::Other => return None,
    })
}

/// The HMAC mechanisms a copy of a key of this type is proven with, in the order tried.
/// An HMAC key type names its one mechanism: strict tokens refuse any other with
/// `CKR_KEY_TYPE_INCONSISTENT`. The others keep SHA-1 then SHA-256: SoftHSM refuses
/// SHA-256 HMAC under 32 bytes, Kryoptic does not, so SHA-1 first makes every make pick
/// the same mechanism for one key. Empty for types that do no HMAC.
pub(crate) fn hmac_mechanisms(t: KeyType) -> &'static [Mechanism<'static>] {
    match t {
        KeyType::GenericSecret | KeyType::Sha1Hmac | KeyType::Sha256Hmac => {
            &[Mechanism::Sha1Hmac, Mechanism::Sha256Hmac]
        }
        KeyType::Sha224Hmac => &[Mechanism::Sha224Hmac],
        KeyType::Sha384Hmac => &[Mechanism::Sha384Hmac],
        KeyType::Sha512Hmac => &[Mechanism::Sha512Hmac],
        KeyType::Aes
        | KeyType::Des3
        | KeyType::Rsa
        | KeyType::Ec
        | KeyType::EcEdwards
        | KeyType::EcMontgomery
        | KeyType::Other => &[],
    }
}

/// The usage flags a key of this class has (PKCS#11 §4.8–4.10: a private key has no
/// `CKA_ENCRYPT`, a public key no `CKA_SIGN`; sending them is `CKR_ATTRIBUTE_TYPE_INVALID`).
pub(crate) fn usage_attributes(class: KeyClass, f: &KeyFlags) -> Vec<Attribute> {
    match class {
        KeyClass::SecretKey => vec![
            Attribute::Encrypt(f.encrypt),
            Attribute::Decrypt(f.decrypt),
            Attribute::Sign(f.sign),
            Attribute::Verify(f.verify),
            Attribute::Wrap(f.wrap),
            Attribute::Unwrap(f.unwrap),
            Attribute::Derive(f.derive),
        ],
        KeyClass::PrivateKey => vec![
            Attribute::Decrypt(f.decrypt),
            Attribute::Sign(f.sign),
            Attribute::SignRecover(f.sign_recover),
            Attribute::Unwrap(f.unwrap),
            Attribute::Derive(f.derive),
        ],
        KeyClass::PublicKey => vec![
            Attribute::Encrypt(f.encrypt),
            Attribute::Verify(f.verify),
            Attribute::VerifyRecover(f.verify_recover),
            Attribute::Wrap(f.wrap),
            Attribute::Derive(f.derive),
        ],
    }
}

/// The attributes of a domain key (CONTRACT.md §2 `lineage create`): an AES token key,
/// private, sensitive, never extractable, for wrap/unwrap/encrypt/decrypt. One list, for
/// the key `lineage create` makes and the one the demo imports.
pub(crate) fn domain_key_template(label: &str) -> Vec<cryptoki::object::Attribute> {
    use cryptoki::object::{Attribute, KeyType, ObjectClass};
    vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Wrap(true),
        Attribute::Unwrap(true),
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
        Attribute::Label(label.as_bytes().to_vec()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_columns_follow_the_table() {
        for (i, (t, n)) in KEY_ATTRIBUTES.iter().enumerate() {
            assert_eq!((KEY_ATTRIBUTE_TYPES[i], KEY_ATTRIBUTE_LENS[i]), (*t, *n));
            assert_eq!(read_len(*t), Some(*n));
        }
        assert_eq!(read_len(AttributeType::Value), None);
    }

    #[test]
    fn key_types_map_both_ways_by_their_raw_value() {
        for t in KeyType::ALL {
            match ck_key_type(t) {
                Some(raw) => assert_eq!(type_of_raw(raw), t, "{t:?}"),
                None => assert_eq!(t, KeyType::Other),
            }
        }
        // The values cryptoki 0.12 cannot hold (its constants carry 0x2B for all three).
        let hmac = [
            (KeyType::Sha1Hmac, 0x28),
            (KeyType::Sha256Hmac, 0x2B),
            (KeyType::Sha384Hmac, 0x2C),
            (KeyType::Sha512Hmac, 0x2D),
            (KeyType::Sha224Hmac, 0x2E),
        ];
        for (t, raw) in hmac {
            assert_eq!(ck_key_type(t), Some(raw), "{t:?}");
        }
        assert_eq!(type_of_raw(0x2F), KeyType::Other);
        assert_eq!(
            type_of(CkKeyType::SHA384_HMAC),
            KeyType::Sha256Hmac,
            "what the session confirms raw"
        );
    }

    #[test]
    fn an_hmac_key_type_is_proven_with_its_own_mechanism() {
        let ids = |t: KeyType| -> Vec<u64> {
            hmac_mechanisms(t)
                .iter()
                .map(|m| cryptoki_sys::CK_MECHANISM_TYPE::from(m.mechanism_type()))
                .collect()
        };
        assert_eq!(ids(KeyType::Sha224Hmac), [0x256]);
        assert_eq!(ids(KeyType::Sha384Hmac), [0x261]);
        assert_eq!(ids(KeyType::Sha512Hmac), [0x271]);
        for t in [KeyType::GenericSecret, KeyType::Sha1Hmac, KeyType::Sha256Hmac] {
            assert_eq!(ids(t), [0x221, 0x251], "{t:?}: SHA-1, then SHA-256, as before");
        }
        assert!(ids(KeyType::Aes).is_empty());
    }
}
