//! The attribute table: which attributes hsm-sync reads per key, and how long a buffer
//! each is read into, so that one raw `C_GetAttributeValue` fetches them all (cryptoki's
//! `get_attributes` asks for the sizes first: two calls, PKCS11-NOTES.md). One table, so
//! the inventory and the benchmark's raw baseline read exactly the same.

use cryptoki::object::AttributeType;

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

/// The attributes of [`KEY_ATTRIBUTES`], in its order (what cryptoki is asked for when the
/// one-call read does not fit).
pub(crate) const KEY_ATTRIBUTE_TYPES: [AttributeType; KEY_ATTRIBUTES.len()] = {
    let mut out = [AttributeType::Class; KEY_ATTRIBUTES.len()];
    let mut i = 0;
    while i < out.len() {
        out[i] = KEY_ATTRIBUTES[i].0;
        i += 1;
    }
    out
};

/// The buffer lengths of [`KEY_ATTRIBUTES`], in its order.
pub(crate) const KEY_ATTRIBUTE_LENS: [usize; KEY_ATTRIBUTES.len()] = {
    let mut out = [0; KEY_ATTRIBUTES.len()];
    let mut i = 0;
    while i < out.len() {
        out[i] = KEY_ATTRIBUTES[i].1;
        i += 1;
    }
    out
};

/// The buffer length [`KEY_ATTRIBUTES`] gives `attribute`, if hsm-sync reads it per key.
pub fn read_len(attribute: AttributeType) -> Option<usize> {
    KEY_ATTRIBUTES.iter().find(|(t, _)| *t == attribute).map(|(_, n)| *n)
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
}
