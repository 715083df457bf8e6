//! Moving keys between tokens: the wrapped blob ([`Wrapped`], zeroized on drop), wrapping
//! under the domain key, and making a copy from a blob (unwrap) or from public
//! attributes, with the one copy template both use.

use cryptoki::error::Error as CkError;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, KeyType as CkKeyType};
use zeroize::Zeroizing;

use super::attributes::{ck_class, ck_type, usage_attributes};
use super::{raw, trace, HsmError, TokenSession};
use crate::domain::key::{KeyClass, KeyObject, KeyType};

/// A wrapped key blob: never printed, never serialized, zeroized on drop.
pub struct Wrapped(pub(super) Zeroizing<Vec<u8>>);

impl Wrapped {
    /// A blob made by the in-memory store of the unit tests.
    #[cfg(test)]
    pub(crate) fn from_bytes(bytes: Vec<u8>) -> Wrapped {
        Wrapped(Zeroizing::new(bytes))
    }

    /// The blob, for the in-memory store of the unit tests.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.0
    }
}

/// A wrap buffer large enough for any secret key (their values are at most a few
/// hundred bytes) and for RSA private keys up to 8192 bits in PKCS#8; larger blobs fall
/// back to cryptoki's size query.
const WRAP_BUF_SECRET: usize = 512;
const WRAP_BUF_PRIVATE: usize = 6144;

/// The mechanism that wraps keys under the domain key: its `CK_MECHANISM_TYPE` and the
/// format it is meant to make. A value carried by the token's
/// [`Profile`](super::profile::Profile), not a constant, because tokens disagree: one id
/// makes different formats on different tokens, and some lack an id others have
/// (Kryoptic offers 0x210B, not 0x210A; PKCS11-NOTES.md, "Wrap mechanisms").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WrapMechanism {
    /// The format, for messages (`rfc5649`).
    pub name: &'static str,
    /// The `CK_MECHANISM_TYPE` given to `C_WrapKey` and `C_UnwrapKey`.
    pub raw: cryptoki_sys::CK_MECHANISM_TYPE,
}

impl WrapMechanism {
    /// AES key wrap with padding (RFC 5649) as `CKM_AES_KEY_WRAP_PAD`, 0x210A: what
    /// hsm-sync has always used, and what SoftHSM 2.6.1 offers (its output is RFC 5649 of
    /// the value zero-padded to 8).
    pub const RFC5649_PAD: WrapMechanism = WrapMechanism {
        name: "rfc5649",
        raw: cryptoki_sys::CKM_AES_KEY_WRAP_PAD,
    };

    /// The same mechanism as cryptoki names it, for the calls made through cryptoki
    /// (unwrap, and wrap where the one-call path does not apply). cryptoki 0.12 cannot
    /// name 0x210B or 0x210C (PKCS11-NOTES.md): such a mechanism is not supported here
    /// until a raw path covers those calls too.
    pub(crate) fn cryptoki(&self) -> Result<Mechanism<'static>, CkError> {
        match self.raw {
            cryptoki_sys::CKM_AES_KEY_WRAP_PAD => Ok(Mechanism::AesKeyWrapPad),
            _ => Err(CkError::NotSupported),
        }
    }
}

impl TokenSession {
    /// This token's wrap mechanism as cryptoki names it; failing as `op` where it cannot.
    pub(super) fn wrap_mechanism(&self, op: &'static str) -> Result<Mechanism<'static>, HsmError> {
        self.profile.wrap.cryptoki().map_err(self.pk(op))
    }

    /// Wraps a key under the domain key with the profile's mechanism: one `C_WrapKey` into a buffer sized
    /// in advance for its class, else cryptoki's two calls.
    pub fn wrap(&self, handle: u64, class: KeyClass) -> Result<Wrapped, HsmError> {
        let h = raw::object(handle);
        let size = match class {
            KeyClass::SecretKey => WRAP_BUF_SECRET,
            _ => WRAP_BUF_PRIVATE,
        };
        let one_call = self
            .raw
            .as_ref()
            .and_then(|r| r.wrap_key(&self.s, self.profile.wrap.raw, self.domain_key, h, size));
        if let Some(blob) = one_call {
            return blob.map(Wrapped).map_err(self.pk("wrapping a key"));
        }
        let mechanism = self.wrap_mechanism("wrapping a key")?;
        let blob = trace::call("C_WrapKey", || self.s.wrap_key(&mechanism, self.domain_key, h))
            .map_err(self.pk("wrapping a key"))?;
        Ok(Wrapped(Zeroizing::new(blob)))
    }

    fn key_type_of(&self, like: &KeyObject) -> Result<CkKeyType, HsmError> {
        ck_type(like.key_type).ok_or(HsmError::Pkcs11 {
            cluster: self.cluster.clone(),
            op: "copying a key of an unsupported type",
            error: CkError::NotSupported,
        })
    }

    /// The attributes every copy carries: identity, protection and usage, each set
    /// explicitly (SoftHSM's unwrap defaults differ from the source's, PKCS11-NOTES.md),
    /// adjusted by the token's [`Profile`].
    fn copy_template(&self, like: &KeyObject) -> Result<Vec<Attribute>, HsmError> {
        let f = &like.flags;
        let private = f.private || self.profile.private_only;
        let mut t = vec![
            Attribute::Class(ck_class(like.class)),
            Attribute::KeyType(self.key_type_of(like)?),
            Attribute::Token(true),
            Attribute::Id(like.id.clone()),
            Attribute::Label(like.label.as_bytes().to_vec()),
            Attribute::Private(private),
            Attribute::Modifiable(f.modifiable),
        ];
        if like.class != KeyClass::PublicKey {
            t.push(Attribute::Sensitive(f.sensitive));
            t.push(Attribute::Extractable(f.extractable));
        }
        t.extend(usage_attributes(like.class, f));
        if self.profile.value_len_on_unwrap && like.class == KeyClass::SecretKey {
            if let Some(n) = like.value_len.filter(|n| *n > 0) {
                t.push(Attribute::ValueLen(n.into()));
            }
        }
        Ok(t)
    }

    /// Unwraps a blob as a token object carrying the source key's attributes. Never sends
    /// what the token refuses in an unwrap template (SoftHSM: `CKA_VALUE_LEN`, and
    /// `CKA_MODULUS`/`CKA_EC_PARAMS` on private keys: they come from the PKCS#8 inside).
    pub fn unwrap_as(&self, blob: &Wrapped, like: &KeyObject) -> Result<u64, HsmError> {
        let template = self.copy_template(like)?;
        let mechanism = self.wrap_mechanism("unwrapping a key")?;
        let h = trace::call("C_UnwrapKey", || {
            self.s.unwrap_key(&mechanism, self.domain_key, &blob.0, &template)
        })
        .map_err(self.pk("unwrapping a key"))?;
        Ok(h.handle())
    }

    /// Creates the public half of a key pair from the source's public attributes.
    pub fn create_public(&self, like: &KeyObject) -> Result<u64, HsmError> {
        let mut template = self.copy_template(like)?;
        let p = like.public();
        match like.key_type {
            KeyType::Rsa => {
                template.push(Attribute::Modulus(p.modulus.clone()));
                template.push(Attribute::PublicExponent(p.public_exponent.clone()));
            }
            KeyType::Ec => {
                template.push(Attribute::EcParams(p.ec_params.clone()));
                template.push(Attribute::EcPoint(p.ec_point.clone()));
            }
            _ => {}
        }
        let h = trace::call("C_CreateObject", || self.s.create_object(&template))
            .map_err(self.pk("creating a public key"))?;
        Ok(h.handle())
    }
}
