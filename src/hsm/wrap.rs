//! Moving keys between tokens: the wrapped blob ([`Wrapped`], zeroized on drop), wrapping
//! under the domain key, and making a copy from a blob (unwrap) or from public
//! attributes, with the one copy template both use.

use std::sync::atomic::Ordering;

use cryptoki::error::{Error as CkError, RvError};
use cryptoki::object::Attribute;
use cryptoki_sys::CK_KEY_TYPE;
use zeroize::Zeroizing;

use super::attributes::{ck_class, ck_key_type, usage_attributes};
use super::{raw, HsmError, TokenSession};
use crate::domain::handle::Handle;
use crate::domain::key::{KeyClass, KeyObject, KeyType};

/// What a run learned a token refuses in unwrap templates (bits of one `AtomicU8` per
/// token, shared by its sessions).
#[derive(Clone, Copy)]
struct Ladder(u8);

impl Ladder {
    /// Send `CKA_VALUE_LEN` (the token said the template is incomplete without it).
    const VALUE_LEN: u8 = 1;
    /// Leave `CKA_VALUE_LEN` out (the token refused it).
    const NO_VALUE_LEN: u8 = 2;
    /// Leave `CKA_MODIFIABLE` out (the token refused it).
    const NO_MODIFIABLE: u8 = 4;

    fn has(self, bit: u8) -> bool {
        self.0 & bit != 0
    }
}

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

    /// The raw `CKK_*` value a copy of `like` is made with: its source's type, always.
    fn key_type_of(&self, like: &KeyObject) -> Result<CK_KEY_TYPE, HsmError> {
        ck_key_type(like.key_type).ok_or(HsmError::Pkcs11 {
            cluster: self.cluster.clone(),
            op: "copying a key of an unsupported type",
            error: CkError::NotSupported,
        })
    }

    /// The attributes every copy carries: identity, protection and usage, each set
    /// explicitly (SoftHSM's unwrap defaults differ from the source's, PKCS11-NOTES.md),
    /// adjusted by the token's [`Profile`] and by what this run learned it refuses. The
    /// key type is not among them: the raw call sends it ([`Self::key_type_of`]), as
    /// cryptoki 0.12 cannot hold the SHA-224/384/512 HMAC types.
    fn copy_template(&self, like: &KeyObject) -> Vec<Attribute> {
        self.copy_template_with(like, Ladder(self.ladder.load(Ordering::Relaxed)))
    }

    /// [`Self::copy_template`] with the rungs `learned` (the run's, and those this unwrap
    /// is trying).
    fn copy_template_with(&self, like: &KeyObject, learned: Ladder) -> Vec<Attribute> {
        let f = &like.flags;
        let private = f.private || self.profile.private_only;
        let mut t = vec![
            Attribute::Class(ck_class(like.class)),
            Attribute::Token(true),
            Attribute::Id(like.id.to_vec()),
            Attribute::Label(like.label.as_bytes().to_vec()),
            Attribute::Private(private),
        ];
        if !learned.has(Ladder::NO_MODIFIABLE) {
            t.push(Attribute::Modifiable(f.modifiable));
        }
        if like.class != KeyClass::PublicKey {
            t.push(Attribute::Sensitive(f.sensitive));
            t.push(Attribute::Extractable(f.extractable));
        }
        t.extend(usage_attributes(like.class, f));
        let value_len =
            (self.profile.value_len_on_unwrap || learned.has(Ladder::VALUE_LEN)) && !learned.has(Ladder::NO_VALUE_LEN);
        if value_len && like.class == KeyClass::SecretKey {
            if let Some(n) = like.value_len.filter(|n| *n > 0) {
                t.push(Attribute::ValueLen(n.into()));
            }
        }
        t
    }

    /// Unwraps a blob as a token object carrying the source key's attributes. Never sends
    /// what the token refuses in an unwrap template (SoftHSM: `CKA_VALUE_LEN`, and
    /// `CKA_MODULUS`/`CKA_EC_PARAMS` on private keys: they come from the PKCS#8 inside).
    ///
    /// The template ladder (issue 14 item 3): a token the profiles do not know may refuse
    /// an attribute. On a template refusal the next rung is tried — `CKA_VALUE_LEN` sent
    /// or left out as the refusal says, then `CKA_MODIFIABLE` left out — and what worked is
    /// kept for the rest of the run only if the unwrap then succeeded: a refusal no rung
    /// cures (a bad value, a key size) fails its job and teaches the run nothing. Never a
    /// rung that weakens the key: `CKA_SENSITIVE`, `CKA_EXTRACTABLE`, `CKA_PRIVATE` and
    /// the usage flags are always sent as the source has them; a token that refuses those
    /// fails the job with its CKR code.
    pub fn unwrap_as(&self, blob: &Wrapped, like: &KeyObject) -> Result<Handle, HsmError> {
        let key_type = self.key_type_of(like)?;
        let mut trying = 0u8;
        loop {
            let learned = Ladder(self.ladder.load(Ordering::Relaxed) | trying);
            let template = self.copy_template_with(like, learned);
            match self
                .raw
                .unwrap_key(&self.s, self.wrap.id, self.domain_key, &blob.0, key_type, &template)
            {
                Ok(h) => {
                    if trying != 0 {
                        self.ladder.fetch_or(trying, Ordering::Relaxed);
                    }
                    return Ok(raw::handle(h));
                }
                Err(CkError::Pkcs11(rv, f)) => match next_rung(rv, like, learned, self.profile.value_len_on_unwrap) {
                    Some(next) => trying |= next,
                    None => return Err(self.pk("unwrapping a key")(CkError::Pkcs11(rv, f))),
                },
                Err(e) => return Err(self.pk("unwrapping a key")(e)),
            }
        }
    }
    /// What copies on this token do not keep because it refused an attribute this run
    /// (for the report's `note`).
    pub fn template_note(&self) -> Option<String> {
        let l = Ladder(self.ladder.load(Ordering::Relaxed));
        let mut dropped = Vec::new();
        if l.has(Ladder::NO_MODIFIABLE) {
            dropped.push("CKA_MODIFIABLE (the copy has the token's default)");
        }
        if l.has(Ladder::NO_VALUE_LEN) {
            dropped.push("CKA_VALUE_LEN (taken from the blob)");
        }
        (!dropped.is_empty()).then(|| format!("the token refused {} in the unwrap template", dropped.join(" and ")))
    }

    /// Creates the public half of a key pair from the source's public attributes.
    pub fn create_public(&self, like: &KeyObject) -> Result<Handle, HsmError> {
        let key_type = self.key_type_of(like)?;
        let mut template = self.copy_template(like);
        let p = like.public();
        match like.key_type {
            KeyType::Rsa => {
                template.push(Attribute::Modulus(p.modulus.clone()));
                template.push(Attribute::PublicExponent(p.public_exponent.clone()));
            }
            KeyType::Ec | KeyType::EcEdwards => {
                template.push(Attribute::EcParams(p.ec_params.clone()));
                template.push(Attribute::EcPoint(p.ec_point.clone()));
            }
            _ => {}
        }
        let h = self
            .raw
            .create_object(&self.s, key_type, &template)
            .map_err(self.pk("creating a public key"))?;
        Ok(raw::handle(h))
    }
}

/// The next rung of the template ladder for refusal `rv` of a template built with `now`
/// (`value_len_first`: the profile sends `CKA_VALUE_LEN` from the start); `None` when no
/// rung is left (the refusal is then the job's error).
fn next_rung(rv: RvError, like: &KeyObject, now: Ladder, value_len_first: bool) -> Option<u8> {
    let secret_with_len = like.class == KeyClass::SecretKey && like.value_len.is_some_and(|n| n > 0);
    let sends_len = (value_len_first || now.has(Ladder::VALUE_LEN)) && !now.has(Ladder::NO_VALUE_LEN);
    match rv {
        RvError::TemplateIncomplete if secret_with_len && !sends_len && !now.has(Ladder::NO_VALUE_LEN) => {
            Some(Ladder::VALUE_LEN)
        }
        RvError::AttributeReadOnly
        | RvError::AttributeTypeInvalid
        | RvError::AttributeValueInvalid
        | RvError::TemplateInconsistent => {
            if secret_with_len && sends_len {
                Some(Ladder::NO_VALUE_LEN)
            } else if !now.has(Ladder::NO_MODIFIABLE) {
                Some(Ladder::NO_MODIFIABLE)
            } else {
                None
            }
        }
        _ => None,
    }
}
