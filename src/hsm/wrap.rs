//! Moving keys between tokens: the wrapped blob ([`Wrapped`], zeroized on drop), wrapping
//! under the domain key, and making a copy from a blob (unwrap) or from public
//! attributes, with the one copy template both use.

use cryptoki::error::Error as CkError;
use cryptoki::object::{Attribute, KeyType as CkKeyType};
use zeroize::Zeroizing;

use super::attributes::{ck_class, ck_type, usage_attributes};
use super::{raw, trace, HsmError, TokenSession};
use crate::domain::handle::Handle;
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
/// hundred bytes) and for RSA private keys up to 8192 bits in PKCS#8; larger blobs are
/// sized by the token's length query.
const WRAP_BUF_SECRET: usize = 512;
const WRAP_BUF_PRIVATE: usize = 6144;

impl TokenSession {
    /// Wraps a key under the domain key with the pair's mechanism: one `C_WrapKey` into a
    /// buffer sized in advance for its class.
    pub fn wrap(&self, handle: Handle, class: KeyClass) -> Result<Wrapped, HsmError> {
        let h = raw::object(handle);
        let size = match class {
            KeyClass::SecretKey => WRAP_BUF_SECRET,
            _ => WRAP_BUF_PRIVATE,
        };
        self.raw
            .wrap_key(&self.s, self.wrap.id, self.domain_key, h, size)
            .map(Wrapped)
            .map_err(self.pk("wrapping a key"))
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
    pub fn unwrap_as(&self, blob: &Wrapped, like: &KeyObject) -> Result<Handle, HsmError> {
        let template = self.copy_template(like)?;
        let h = self
            .raw
            .unwrap_key(&self.s, self.wrap.id, self.domain_key, &blob.0, &template)
            .map_err(self.pk("unwrapping a key"))?;
        Ok(raw::handle(h))
    }

    /// Creates the public half of a key pair from the source's public attributes.
    pub fn create_public(&self, like: &KeyObject) -> Result<Handle, HsmError> {
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
        Ok(raw::handle(h))
    }
}
