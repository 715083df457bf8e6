//! One PKCS#11 session on a token, with its domain key found: how it is made, and the key
//! operations that read or change keys in place (listing, reading, finding a copy,
//! updating usage, destroying, HMAC, random). Wrapping, fingerprints, lineage and
//! hsm-sync's own records are the other files of `hsm`, each an `impl TokenSession` of
//! its own.

use std::num::NonZeroUsize;
use std::sync::Arc;

use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use sha2::Digest;

use super::attributes::{
    ck_class, class_of, hmac_mechanisms, type_of, type_of_raw, usage_attributes, KEY_ATTRIBUTE_LENS,
    KEY_ATTRIBUTE_LENS_UID, KEY_ATTRIBUTE_TYPES, KEY_ATTRIBUTE_TYPES_UID,
};
use super::capabilities::WrapMechanism;
use super::profile::Profile;
use super::raw::{self, RawFns, RawRead};
use super::trace;
use super::HsmError;
use crate::domain::fingerprint::Fingerprint;
use crate::domain::handle::Handle;
use crate::domain::key::{sort_keys, KeyClass, KeyFlags, KeyObject, KeyType, PublicParts};

/// Find objects this many handles per `C_FindObjects` call (cryptoki's default is 10: a
/// round trip per 10 keys on a network HSM).
pub(crate) const FIND_BATCH: NonZeroUsize = match NonZeroUsize::new(1024) {
    Some(n) => n,
    None => NonZeroUsize::MIN,
};

/// Finds the one domain key of a token by label.
///
/// First among the keys that can wrap and unwrap, the labels last: SoftHSM compares a
/// template in order and decrypts a private object's label to compare it, so a search
/// by label alone costs one decryption per secret key on the token (78 ms against 20 ms
/// at 1,000 keys; PKCS11-NOTES.md). Only if that finds nothing is every secret key of
/// the label looked at, for the message that says what is wrong with it.
pub(crate) fn find_domain_key(s: &Session, cluster: &str, label: &str) -> Result<ObjectHandle, HsmError> {
    let search = |usable: bool| {
        let mut template = vec![Attribute::Class(ObjectClass::SECRET_KEY)];
        if usable {
            template.extend([Attribute::Wrap(true), Attribute::Unwrap(true)]);
        }
        template.push(Attribute::Label(label.as_bytes().to_vec()));
        trace::call("C_FindObjects", || s.find_objects(&template)).map_err(|error| HsmError::Pkcs11 {
            cluster: cluster.into(),
            op: "finding the domain key",
            error,
        })
    };
    let mut found = search(true)?;
    if found.is_empty() {
        found = search(false)?;
    }
    let err = |problem: String, help: String| HsmError::DomainKey {
        cluster: cluster.into(),
        label: label.into(),
        problem,
        help,
    };
    let h = match found.as_slice() {
        [h] => *h,
        [] => {
            return Err(err(
                "no".into(),
                format!("on a primary, make it with `hsm-sync lineage create PLAN {cluster}` before the token is cloned; a clone restored from the primary's backup holds it already (set `lineage.domain_key` if it has another label)"),
            ))
        }
        many => {
            let which: Vec<String> = many.iter().map(|h| format!("handle {}", h.handle())).collect();
            return Err(err(
                format!("more than one ({})", which.join(", ")),
                "a lineage has exactly one domain key per token: relabel or remove the extra object(s)".into(),
            ));
        }
    };
    // A domain key that cannot wrap or unwrap fails later with a bare
    // CKR_KEY_FUNCTION_NOT_PERMITTED; say which attribute it lacks now.
    let attrs = trace::call("C_GetAttributeValue", || {
        s.get_attributes(h, &[AttributeType::Wrap, AttributeType::Unwrap])
    })
    .map_err(|error| HsmError::Pkcs11 {
        cluster: cluster.into(),
        op: "reading the domain key's attributes",
        error,
    })?;
    let mut lacks = Vec::new();
    for a in attrs {
        match a {
            Attribute::Wrap(false) => lacks.push("CKA_WRAP"),
            Attribute::Unwrap(false) => lacks.push("CKA_UNWRAP"),
            _ => {}
        }
    }
    if !lacks.is_empty() {
        return Err(err(
            format!("an unusable (handle {}: {} false)", h.handle(), lacks.join(" and ")),
            "the domain key must have CKA_WRAP and CKA_UNWRAP true; it cannot be changed once made, so make a new one (`hsm-sync lineage create`) on the primary before cloning".into(),
        ));
    }
    Ok(h)
}

/// A session on one token, with its domain key found.
pub struct TokenSession {
    pub(super) s: Session,
    pub(super) cluster: String,
    /// The token's label, for messages that must name the token itself.
    pub(super) token: String,
    pub(super) domain_key: ObjectHandle,
    pub(super) profile: &'static Profile,
    pub(super) raw: Arc<RawFns>,
    /// The mechanism of the pair's wire format on this token (copies, fingerprints, the
    /// lineage proof): negotiated by `connect`, else this token's preferred.
    pub(super) wrap: WrapMechanism,
    /// The template ladder this run learned for the token (shared by its sessions).
    pub(super) ladder: Arc<std::sync::atomic::AtomicU8>,
}

impl TokenSession {
    // One argument per field, built in one place (`Token::session`).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        s: Session,
        cluster: String,
        token: String,
        domain_key: ObjectHandle,
        profile: &'static Profile,
        raw: Arc<RawFns>,
        wrap: WrapMechanism,
        ladder: Arc<std::sync::atomic::AtomicU8>,
    ) -> Self {
        TokenSession {
            s,
            cluster,
            token,
            domain_key,
            profile,
            raw,
            wrap,
            ladder,
        }
    }

    /// An error mapper naming this session's cluster and what was being done.
    pub(super) fn pk(&self, op: &'static str) -> impl FnOnce(CkError) -> HsmError + '_ {
        move |error| HsmError::Pkcs11 {
            cluster: self.cluster.clone(),
            op,
            error,
        }
    }

    /// Every key object on the token (token objects of the three key classes), the domain
    /// key excluded, each with its fingerprint where it can be wrapped.
    pub fn list_keys(&self) -> Result<Vec<KeyObject>, HsmError> {
        let mut out = Vec::new();
        for h in self.key_handles()? {
            out.extend(self.read_fingerprinted(h, true)?);
        }
        sort_keys(&mut out);
        Ok(out)
    }

    /// The handles of every key on the token but the domain key, found in batches of
    /// `FIND_BATCH` (1,024), one search per key class. hsm-sync's own data objects (notify
    /// state, the in-flight journal) are never read here: another run may be rewriting
    /// them, and they are not keys.
    pub fn key_handles(&self) -> Result<Vec<Handle>, HsmError> {
        self.key_handles_or(None)
    }

    /// [`Self::key_handles`], from handles `listed` by login's search where given.
    pub fn key_handles_or(&self, listed: Option<Vec<Handle>>) -> Result<Vec<Handle>, HsmError> {
        if let Some(mut l) = listed {
            l.retain(|h| *h != raw::handle(self.domain_key));
            return Ok(l);
        }
        let mut out = Vec::new();
        for class in [
            ObjectClass::SECRET_KEY,
            ObjectClass::PRIVATE_KEY,
            ObjectClass::PUBLIC_KEY,
        ] {
            let found = trace::call("C_FindObjects", || {
                self.s
                    .iter_objects_with_cache_size(&[Attribute::Token(true), Attribute::Class(class)], FIND_BATCH)?
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(self.pk("listing keys"))?;
            for h in found {
                if h != self.domain_key {
                    out.push(raw::handle(h));
                }
            }
        }
        Ok(out)
    }

    /// Reads one object and fingerprints it; `None` if it is not a key (or vanished).
    /// Secret and private keys only if `wrap` (theirs costs a `C_WrapKey`); a public
    /// key's comes from its attributes, always.
    pub fn read_fingerprinted(&self, handle: Handle, wrap: bool) -> Result<Option<KeyObject>, HsmError> {
        let h = raw::object(handle);
        match self.read_key(h)? {
            Some(mut k) => {
                if wrap || k.class == KeyClass::PublicKey {
                    k.fingerprint = Fingerprint::tried(self.fingerprint(&k)?);
                }
                Ok(Some(k))
            }
            None => Ok(None),
        }
    }

    /// Reads one object's attributes; `None` if it is not a key (or vanished meanwhile).
    pub fn read_key(&self, h: ObjectHandle) -> Result<Option<KeyObject>, HsmError> {
        Ok(self.read_key_as(h, false)?.map(|(k, _)| k))
    }

    /// Reads one key and, in the same call, its `CKA_UNIQUE_ID` (`None` where the token
    /// keeps none); not fingerprinted.
    pub fn read_with_unique_id(&self, handle: Handle) -> Result<Option<(KeyObject, Option<String>)>, HsmError> {
        self.read_key_as(raw::object(handle), true)
    }

    /// [`Self::read_key`], with `CKA_UNIQUE_ID` asked for too where `uid`.
    fn read_key_as(&self, h: ObjectHandle, uid: bool) -> Result<Option<(KeyObject, Option<String>)>, HsmError> {
        let (types, lens): (&[AttributeType], &[usize]) = match uid {
            true => (&KEY_ATTRIBUTE_TYPES_UID, &KEY_ATTRIBUTE_LENS_UID),
            false => (KEY_ATTRIBUTE_TYPES, KEY_ATTRIBUTE_LENS),
        };
        let read = match self.read_raw(h, types, lens, &[AttributeType::Id, AttributeType::Label]) {
            Some(r) => r,
            None => trace::call("C_GetAttributeValue", || self.s.get_attributes(h, types)).map(|attributes| RawRead {
                attributes,
                key_type: None,
            }),
        };
        let RawRead {
            attributes: attrs,
            key_type: raw_key_type,
        } = match read {
            Ok(r) => r,
            Err(CkError::Pkcs11(RvError::ObjectHandleInvalid, _)) => return Ok(None),
            Err(e) => return Err(self.pk("reading key attributes")(e)),
        };
        let mut class = None;
        let mut key_type = KeyType::Other;
        let mut id = Vec::new();
        let mut label = String::new();
        let mut f = KeyFlags::default();
        let mut value_len = None;
        let mut public = PublicParts::default();
        let mut unique_id = None;
        for a in attrs {
            match a {
                Attribute::Class(c) => class = class_of(c),
                Attribute::KeyType(t) => key_type = type_of(t),
                Attribute::Id(v) => id = v,
                Attribute::Label(v) => label = String::from_utf8_lossy(&v).into_owned(),
                Attribute::Private(b) => f.private = b,
                Attribute::Sensitive(b) => f.sensitive = b,
                Attribute::Extractable(b) => f.extractable = b,
                Attribute::Encrypt(b) => f.encrypt = b,
                Attribute::Decrypt(b) => f.decrypt = b,
                Attribute::Sign(b) => f.sign = b,
                Attribute::Verify(b) => f.verify = b,
                Attribute::Wrap(b) => f.wrap = b,
                Attribute::Unwrap(b) => f.unwrap = b,
                Attribute::Derive(b) => f.derive = b,
                Attribute::SignRecover(b) => f.sign_recover = b,
                Attribute::VerifyRecover(b) => f.verify_recover = b,
                Attribute::Modifiable(b) => f.modifiable = b,
                Attribute::ValueLen(n) => value_len = Some(u64::from(n)),
                Attribute::Modulus(v) => public.modulus = v,
                Attribute::PublicExponent(v) => public.public_exponent = v,
                Attribute::EcParams(v) => public.ec_params = v,
                Attribute::EcPoint(v) => public.ec_point = v,
                Attribute::UniqueId(v) if !v.is_empty() => unique_id = Some(String::from_utf8_lossy(&v).into_owned()),
                _ => {}
            }
        }
        // cryptoki reads CKK_SHA224/384/512_HMAC as CKK_SHA256_HMAC (PKCS11-NOTES.md): the
        // number the token gave decides. The one-call read keeps it; only where cryptoki
        // read instead is a key it calls SHA-256 HMAC asked once more.
        if let Some(t) = raw_key_type {
            key_type = type_of_raw(t);
        } else if key_type == KeyType::Sha256Hmac {
            key_type = self
                .raw
                .ulong_attribute(&self.s, h, cryptoki_sys::CKA_KEY_TYPE)
                .map_or(KeyType::Other, type_of_raw);
        }
        Ok(class.map(|class| {
            let k = KeyObject {
                handle: raw::handle(h),
                class,
                key_type,
                id: id.into(),
                label: label.into(),
                flags: f,
                value_len,
                public_parts: (public != PublicParts::default()).then(|| Box::new(public)),
                fingerprint: Fingerprint::Deferred,
            };
            (k, unique_id)
        }))
    }

    /// `types` in one raw `C_GetAttributeValue` with buffers sized in advance (`sizes`),
    /// not cryptoki's two calls (one to size, one to read). `None` when that is not
    /// possible (no raw function list, or a value larger than its buffer, or one of
    /// `must_have` unavailable): the caller then asks cryptoki, which sizes first.
    pub(crate) fn read_raw(
        &self,
        h: ObjectHandle,
        types: &[AttributeType],
        sizes: &[usize],
        must_have: &[AttributeType],
    ) -> Option<Result<RawRead, CkError>> {
        self.raw.get_attribute_value(&self.s, h, types, sizes, must_have)
    }

    /// Reads the key at a handle this session just made (for verification).
    pub fn read_key_at(&self, handle: Handle) -> Result<Option<KeyObject>, HsmError> {
        self.read_key(raw::object(handle))
    }

    /// The keys on this token with the identity of `like` (class + id, or class + label
    /// when the id is empty), fingerprinted: how a retried or interrupted copy finds what
    /// an earlier attempt may have left.
    pub fn find_like(&self, like: &KeyObject) -> Result<Vec<KeyObject>, HsmError> {
        let mut template = vec![Attribute::Token(true), Attribute::Class(ck_class(like.class))];
        if like.id.is_empty() {
            template.push(Attribute::Label(like.label.as_bytes().to_vec()));
        } else {
            template.push(Attribute::Id(like.id.to_vec()));
        }
        let mut out = Vec::new();
        for h in trace::call("C_FindObjects", || self.s.find_objects(&template)).map_err(self.pk("finding keys"))? {
            if let Some(mut k) = self.read_key(h)? {
                if k.identity() == like.identity() {
                    k.fingerprint = Fingerprint::tried(self.fingerprint(&k)?);
                    out.push(k);
                }
            }
        }
        Ok(out)
    }

    /// Sets a copy's label and usage flags to the source's (`update`).
    pub fn set_usage(&self, handle: Handle, like: &KeyObject) -> Result<(), HsmError> {
        let h = raw::object(handle);
        let mut template = vec![Attribute::Label(like.label.as_bytes().to_vec())];
        template.extend(usage_attributes(like.class, &like.flags));
        trace::call("C_SetAttributeValue", || self.s.update_attributes(h, &template))
            .map_err(self.pk("updating attributes"))
    }

    /// Destroys an object (used to remove a copy that failed verification).
    pub fn destroy(&self, handle: Handle) -> Result<(), HsmError> {
        let h = raw::object(handle);
        trace::call("C_DestroyObject", || self.s.destroy_object(h)).map_err(self.pk("destroying an object"))
    }

    /// An HMAC of `data` under a secret key of `key_type`, with the mechanism its type
    /// names (a `CKK_SHA384_HMAC` key: HMAC-SHA-384), or for a generic secret or a SHA-1
    /// or SHA-256 HMAC key SHA-1, then SHA-256 where the token refuses SHA-1 for the key
    /// (its size, or its type) ([`hmac_mechanisms`]). A copy keeps its type, so both
    /// sides of a pair pick the same mechanism. `None` when the key fits none of them.
    pub fn hmac(&self, handle: Handle, key_type: KeyType, data: &[u8]) -> Result<Option<Vec<u8>>, HsmError> {
        let h = raw::object(handle);
        for mech in hmac_mechanisms(key_type) {
            match trace::call("C_Sign", || self.s.sign(mech, h, data)) {
                Ok(mac) => return Ok(Some(mac)),
                // Too short for this mechanism, or an HMAC key type made for the other one.
                Err(CkError::Pkcs11(RvError::KeySizeRange | RvError::KeyTypeInconsistent, _)) => continue,
                Err(e) => return Err(self.pk("computing an HMAC")(e)),
            }
        }
        Ok(None)
    }

    /// A signature of `data` by the private key at `handle` (RSA PKCS#1 v1.5 with SHA-256,
    /// or ECDSA over the SHA-256 of `data`): how a private key's copy is proven across
    /// tokens of different makes, whose PKCS#8 encodings of one key differ. `None` for a
    /// key type that does not sign.
    pub fn sign(&self, handle: Handle, key_type: KeyType, data: &[u8]) -> Result<Option<Vec<u8>>, HsmError> {
        let h = raw::object(handle);
        let digest = sha2::Sha256::digest(data);
        let signed = match key_type {
            KeyType::Rsa => trace::call("C_Sign", || self.s.sign(&Mechanism::Sha256RsaPkcs, h, data)),
            KeyType::Ec => trace::call("C_Sign", || self.s.sign(&Mechanism::Ecdsa, h, &digest)),
            // EdDSA hashes the message itself (pure Ed25519: no parameter).
            KeyType::EcEdwards => trace::call("C_Sign", || self.s.sign(&eddsa(), h, data)),
            _ => return Ok(None),
        };
        signed.map(Some).map_err(self.pk("signing the copy's proof"))
    }

    /// Whether `signature` of `data` verifies under the public half of `private` on this
    /// token (the source's); `None` when this token holds no such public key.
    pub fn verify_public(&self, private: &KeyObject, data: &[u8], signature: &[u8]) -> Result<Option<bool>, HsmError> {
        let mut like = private.clone();
        like.class = KeyClass::PublicKey;
        let found = self.find_like(&like)?;
        let [public] = found.as_slice() else {
            return Ok(None);
        };
        let h = raw::object(public.handle);
        let digest = sha2::Sha256::digest(data);
        let checked = match private.key_type {
            KeyType::Rsa => trace::call("C_Verify", || {
                self.s.verify(&Mechanism::Sha256RsaPkcs, h, data, signature)
            }),
            KeyType::Ec => trace::call("C_Verify", || self.s.verify(&Mechanism::Ecdsa, h, &digest, signature)),
            KeyType::EcEdwards => trace::call("C_Verify", || self.s.verify(&eddsa(), h, data, signature)),
            _ => return Ok(None),
        };
        match checked {
            Ok(()) => Ok(Some(true)),
            Err(CkError::Pkcs11(RvError::SignatureInvalid | RvError::SignatureLenRange, _)) => Ok(Some(false)),
            Err(e) => Err(self.pk("verifying the copy's proof")(e)),
        }
    }

    /// Random bytes from the token's generator.
    pub fn random(&self, n: usize) -> Result<Vec<u8>, HsmError> {
        let mut buf = vec![0u8; n];
        trace::call("C_GenerateRandom", || self.s.generate_random_slice(&mut buf))
            .map_err(self.pk("generating random bytes"))?;
        Ok(buf)
    }
}

/// `CKM_EDDSA` with no parameter: pure Ed25519 (or Ed448 without a context).
fn eddsa() -> Mechanism<'static> {
    use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
    Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure))
}
