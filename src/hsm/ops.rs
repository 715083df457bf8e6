//! Key operations on one session, in domain types: inventory, wrap, unwrap, verify, and
//! the lineage proof. Wrapped blobs exist only inside [`Wrapped`], zeroized on drop.

use std::num::NonZeroUsize;
use std::sync::Arc;

use cryptoki::context::Function;
use cryptoki::error::{Error as CkError, Rv, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType as CkKeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::attributes::{KEY_ATTRIBUTE_LENS, KEY_ATTRIBUTE_TYPES};
use super::profile::Profile;
use super::{HsmError, RawFns};
use crate::domain::key::{sort_keys, KeyClass, KeyFlags, KeyObject, KeyType, PublicParts};

/// A wrapped key blob: never printed, never serialized, zeroized on drop.
pub struct Wrapped(Zeroizing<Vec<u8>>);

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

    /// The fingerprint of the key inside (see [`fingerprint_of`]).
    pub fn fingerprint(&self, class: KeyClass) -> String {
        fingerprint_of(class, &self.0)
    }
}

/// A key fingerprint: SHA-256 over a domain-separation tag, the class and the RFC 5649
/// wrap of the key under the domain key, first 8 bytes in hex. AES key wrap is
/// deterministic, so equal keys under one lineage give equal fingerprints, and the digest
/// reveals nothing of the key (CONTRACT.md §1; 64 bits, not a 3-byte KCV).
pub fn fingerprint_of(class: KeyClass, blob: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(b"hsm-sync/key-fingerprint/v1\0");
    h.update([class.code()]);
    h.update(blob);
    hex::encode(&h.finalize()[..8])
}

/// A public key's fingerprint: its public attributes hashed (they are public; the domain
/// key is not needed to compare them across tokens).
pub fn public_fingerprint(key_type: KeyType, p: &PublicParts) -> String {
    let mut h = Sha256::new();
    h.update(b"hsm-sync/public-key-fingerprint/v1\0");
    h.update([key_type.code()]);
    for part in [&p.modulus, &p.public_exponent, &p.ec_params, &p.ec_point] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    hex::encode(&h.finalize()[..8])
}

/// Find objects this many handles per `C_FindObjects` call (cryptoki's default is 10: a
/// round trip per 10 keys on a network HSM).
pub(crate) const FIND_BATCH: NonZeroUsize = match NonZeroUsize::new(1024) {
    Some(n) => n,
    None => NonZeroUsize::MIN,
};

/// A wrap buffer large enough for any secret key (their values are at most a few
/// hundred bytes) and for RSA private keys up to 8192 bits in PKCS#8; larger blobs fall
/// back to cryptoki's size query.
const WRAP_BUF_SECRET: usize = 512;
const WRAP_BUF_PRIVATE: usize = 6144;

const WRAP: Mechanism<'static> = Mechanism::AesKeyWrapPad;

/// Finds the one domain key of a token by label.
pub(crate) fn find_domain_key(s: &Session, cluster: &str, label: &str) -> Result<ObjectHandle, HsmError> {
    let found = s
        .find_objects(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Label(label.as_bytes().to_vec()),
        ])
        .map_err(|error| HsmError::Pkcs11 {
            cluster: cluster.into(),
            op: "finding the domain key",
            error,
        })?;
    match found.as_slice() {
        [h] => Ok(*h),
        [] => Err(HsmError::DomainKey {
            cluster: cluster.into(),
            label: label.into(),
            problem: "no",
        }),
        _ => Err(HsmError::DomainKey {
            cluster: cluster.into(),
            label: label.into(),
            problem: "more than one",
        }),
    }
}

fn class_of(c: ObjectClass) -> Option<KeyClass> {
    match c {
        ObjectClass::SECRET_KEY => Some(KeyClass::SecretKey),
        ObjectClass::PRIVATE_KEY => Some(KeyClass::PrivateKey),
        ObjectClass::PUBLIC_KEY => Some(KeyClass::PublicKey),
        _ => None,
    }
}

fn ck_class(c: KeyClass) -> ObjectClass {
    match c {
        KeyClass::SecretKey => ObjectClass::SECRET_KEY,
        KeyClass::PrivateKey => ObjectClass::PRIVATE_KEY,
        KeyClass::PublicKey => ObjectClass::PUBLIC_KEY,
    }
}

fn type_of(t: CkKeyType) -> KeyType {
    match t {
        CkKeyType::AES => KeyType::Aes,
        CkKeyType::GENERIC_SECRET => KeyType::GenericSecret,
        CkKeyType::DES3 => KeyType::Des3,
        CkKeyType::RSA => KeyType::Rsa,
        CkKeyType::EC => KeyType::Ec,
        _ => KeyType::Other,
    }
}

fn ck_type(t: KeyType) -> Option<CkKeyType> {
    Some(match t {
        KeyType::Aes => CkKeyType::AES,
        KeyType::GenericSecret => CkKeyType::GENERIC_SECRET,
        KeyType::Des3 => CkKeyType::DES3,
        KeyType::Rsa => CkKeyType::RSA,
        KeyType::Ec => CkKeyType::EC,
        KeyType::Other => return None,
    })
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

/// A session on one token, with its domain key found.
pub struct TokenSession {
    s: Session,
    cluster: String,
    domain_key: ObjectHandle,
    profile: &'static Profile,
    raw: Option<Arc<RawFns>>,
}

impl TokenSession {
    pub(crate) fn new(
        s: Session,
        cluster: String,
        domain_key: ObjectHandle,
        profile: &'static Profile,
        raw: Option<Arc<RawFns>>,
    ) -> Self {
        TokenSession {
            s,
            cluster,
            domain_key,
            profile,
            raw,
        }
    }

    fn pk(&self, op: &'static str) -> impl FnOnce(CkError) -> HsmError + '_ {
        move |error| HsmError::Pkcs11 {
            cluster: self.cluster.clone(),
            op,
            error,
        }
    }

    /// The PKCS#11 session, for the other files of `hsm` (data objects in `state.rs`).
    pub(crate) fn raw(&self) -> &Session {
        &self.s
    }

    /// An error mapper naming this session's cluster and what was being done.
    pub(crate) fn pk_err(&self, op: &'static str) -> impl FnOnce(CkError) -> HsmError + '_ {
        self.pk(op)
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
    pub fn key_handles(&self) -> Result<Vec<u64>, HsmError> {
        self.key_handles_or(None)
    }

    /// [`Self::key_handles`], from handles `listed` by login's search where given.
    pub fn key_handles_or(&self, listed: Option<Vec<u64>>) -> Result<Vec<u64>, HsmError> {
        if let Some(mut l) = listed {
            l.retain(|h| *h != self.domain_key.handle());
            return Ok(l);
        }
        let mut out = Vec::new();
        for class in [
            ObjectClass::SECRET_KEY,
            ObjectClass::PRIVATE_KEY,
            ObjectClass::PUBLIC_KEY,
        ] {
            for h in self
                .s
                .iter_objects_with_cache_size(&[Attribute::Token(true), Attribute::Class(class)], FIND_BATCH)
                .map_err(self.pk("listing keys"))?
            {
                let h = h.map_err(self.pk("listing keys"))?;
                if h != self.domain_key {
                    out.push(h.handle());
                }
            }
        }
        Ok(out)
    }

    /// Reads one object and fingerprints it; `None` if it is not a key (or vanished).
    /// Secret and private keys only if `wrap` (theirs costs a `C_WrapKey`); a public
    /// key's comes from its attributes, always.
    pub fn read_fingerprinted(&self, handle: u64, wrap: bool) -> Result<Option<KeyObject>, HsmError> {
        // SAFETY: handles come from this token's own listing.
        let h = unsafe { ObjectHandle::new_from_raw(handle) };
        match self.read_key(h)? {
            Some(mut k) => {
                if wrap || k.class == KeyClass::PublicKey {
                    k.fingerprint = self.fingerprint(&k)?;
                }
                Ok(Some(k))
            }
            None => Ok(None),
        }
    }

    /// Reads one object's attributes; `None` if it is not a key (or vanished meanwhile).
    pub fn read_key(&self, h: ObjectHandle) -> Result<Option<KeyObject>, HsmError> {
        let attrs = match self.read_raw(
            h,
            &KEY_ATTRIBUTE_TYPES,
            &KEY_ATTRIBUTE_LENS,
            &[AttributeType::Id, AttributeType::Label],
        ) {
            Some(r) => r,
            None => self.s.get_attributes(h, &KEY_ATTRIBUTE_TYPES),
        };
        let attrs = match attrs {
            Ok(a) => a,
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
                _ => {}
            }
        }
        Ok(class.map(|class| KeyObject {
            handle: h.handle(),
            class,
            key_type,
            id,
            label,
            flags: f,
            value_len,
            public_parts: (public != PublicParts::default()).then(|| Box::new(public)),
            fingerprint: None,
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
    ) -> Option<Result<Vec<Attribute>, CkError>> {
        let get = self.raw.as_ref()?.f.C_GetAttributeValue?;
        let mut buf = vec![0u8; sizes.iter().sum()];
        let mut template = Vec::with_capacity(types.len());
        let mut at = 0;
        for (t, n) in types.iter().zip(sizes) {
            template.push(cryptoki_sys::CK_ATTRIBUTE {
                type_: (*t).into(),
                // SAFETY: `at + n` never exceeds the buffer (it is the sum of the sizes).
                pValue: unsafe { buf.as_mut_ptr().add(at) }.cast(),
                ulValueLen: *n as cryptoki_sys::CK_ULONG,
            });
            at += n;
        }
        // SAFETY: every template entry points at its own part of `buf`, of its stated
        // length; `buf` and `template` outlive the call. The session is this one's.
        let rv = unsafe {
            get(
                self.s.handle(),
                h.handle(),
                template.as_mut_ptr(),
                template.len() as cryptoki_sys::CK_ULONG,
            )
        };
        match Rv::from(rv) {
            Rv::Ok | Rv::Error(RvError::AttributeSensitive | RvError::AttributeTypeInvalid) => {}
            Rv::Error(RvError::BufferTooSmall) => return None,
            other => return Some(other.into_result(Function::GetAttributeValue).map(|()| Vec::new())),
        }
        // When another attribute's error (a sensitive value) is what the call returned, a
        // value too long for its buffer shows only as "unavailable", with no
        // CKR_BUFFER_TOO_SMALL: for what every object has, let cryptoki size it instead.
        if types
            .iter()
            .zip(&template)
            .any(|(t, a)| must_have.contains(t) && a.ulValueLen == cryptoki_sys::CK_UNAVAILABLE_INFORMATION)
        {
            return None;
        }
        let mut out = Vec::with_capacity(types.len());
        for (a, n) in template.iter().zip(sizes) {
            if a.ulValueLen == cryptoki_sys::CK_UNAVAILABLE_INFORMATION {
                continue;
            }
            if a.ulValueLen as usize > *n {
                return None;
            }
            match Attribute::try_from(*a) {
                Ok(v) => out.push(v),
                Err(e) => return Some(Err(e)),
            }
        }
        Some(Ok(out))
    }

    /// Reads the key at a handle this session just made (for verification).
    pub fn read_key_at(&self, handle: u64) -> Result<Option<KeyObject>, HsmError> {
        // SAFETY: the handle comes from this token's own unwrap or create.
        self.read_key(unsafe { ObjectHandle::new_from_raw(handle) })
    }

    /// The handle of a key named by the plan's `handle:` selector, if it is a key here.
    pub fn key_by_handle(&self, handle: u64) -> Result<Option<KeyObject>, HsmError> {
        // SAFETY: a handle from the operator may name nothing; the token answers
        // CKR_OBJECT_HANDLE_INVALID, which read_key turns into None.
        let h = unsafe { ObjectHandle::new_from_raw(handle) };
        match self.read_key(h)? {
            Some(mut k) => {
                k.fingerprint = self.fingerprint(&k)?;
                Ok(Some(k))
            }
            None => Ok(None),
        }
    }

    /// The fingerprint of a key on this token: public attributes for a public key, the
    /// wrapped blob's digest for others (`None` when it cannot be wrapped).
    pub fn fingerprint(&self, k: &KeyObject) -> Result<Option<String>, HsmError> {
        if k.class == KeyClass::PublicKey {
            return Ok(Some(public_fingerprint(k.key_type, k.public())));
        }
        if !k.flags.extractable {
            return Ok(None);
        }
        self.fingerprint_at(k.handle, k.class)
    }

    /// The fingerprint of the secret or private key at `handle` (`None` when it cannot be
    /// wrapped): how a copy is verified, in one `C_WrapKey`.
    pub fn fingerprint_at(&self, handle: u64, class: KeyClass) -> Result<Option<String>, HsmError> {
        match self.wrap(handle, class) {
            Ok(w) => Ok(Some(w.fingerprint(class))),
            Err(HsmError::Pkcs11 {
                error:
                    CkError::Pkcs11(
                        RvError::KeyUnextractable | RvError::KeyNotWrappable | RvError::KeyFunctionNotPermitted,
                        _,
                    ),
                ..
            }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Wraps a key under the domain key (RFC 5649): one `C_WrapKey` into a buffer sized
    /// in advance for its class, else cryptoki's two calls.
    pub fn wrap(&self, handle: u64, class: KeyClass) -> Result<Wrapped, HsmError> {
        // SAFETY: handles come from this token's own listing.
        let h = unsafe { ObjectHandle::new_from_raw(handle) };
        let size = match class {
            KeyClass::SecretKey => WRAP_BUF_SECRET,
            _ => WRAP_BUF_PRIVATE,
        };
        if let Some(wrap) = self.raw.as_ref().and_then(|r| r.f.C_WrapKey) {
            let mut buf = Zeroizing::new(vec![0u8; size]);
            let mut len = size as cryptoki_sys::CK_ULONG;
            let mut mech = cryptoki_sys::CK_MECHANISM {
                mechanism: cryptoki_sys::CKM_AES_KEY_WRAP_PAD,
                pParameter: std::ptr::null_mut(),
                ulParameterLen: 0,
            };
            // SAFETY: the mechanism takes no parameter; `buf` is writable for `len`
            // bytes; the session and handles belong to this token.
            let rv = unsafe {
                wrap(
                    self.s.handle(),
                    &mut mech,
                    self.domain_key.handle(),
                    h.handle(),
                    buf.as_mut_ptr(),
                    &mut len,
                )
            };
            match Rv::from(rv) {
                Rv::Ok if len as usize <= size => {
                    buf.truncate(len as usize);
                    return Ok(Wrapped(buf));
                }
                // Larger than foreseen: let cryptoki ask for the size.
                Rv::Ok | Rv::Error(RvError::BufferTooSmall) => {}
                other => {
                    return Err(self.pk("wrapping a key")(
                        other
                            .into_result(Function::WrapKey)
                            .err()
                            .unwrap_or(CkError::NotSupported),
                    ))
                }
            }
        }
        let blob = self
            .s
            .wrap_key(&WRAP, self.domain_key, h)
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
        let h = self
            .s
            .unwrap_key(&WRAP, self.domain_key, &blob.0, &template)
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
        let h = self
            .s
            .create_object(&template)
            .map_err(self.pk("creating a public key"))?;
        Ok(h.handle())
    }

    /// The keys on this token with the identity of `like` (class + id, or class + label
    /// when the id is empty), fingerprinted: how a retried or interrupted copy finds what
    /// an earlier attempt may have left.
    pub fn find_like(&self, like: &KeyObject) -> Result<Vec<KeyObject>, HsmError> {
        let mut template = vec![Attribute::Token(true), Attribute::Class(ck_class(like.class))];
        if like.id.is_empty() {
            template.push(Attribute::Label(like.label.as_bytes().to_vec()));
        } else {
            template.push(Attribute::Id(like.id.clone()));
        }
        let mut out = Vec::new();
        for h in self.s.find_objects(&template).map_err(self.pk("finding keys"))? {
            if let Some(mut k) = self.read_key(h)? {
                if k.identity() == like.identity() {
                    k.fingerprint = self.fingerprint(&k)?;
                    out.push(k);
                }
            }
        }
        Ok(out)
    }

    /// Sets a copy's label and usage flags to the source's (`update`).
    pub fn set_usage(&self, handle: u64, like: &KeyObject) -> Result<(), HsmError> {
        // SAFETY: handles come from this token's own listing.
        let h = unsafe { ObjectHandle::new_from_raw(handle) };
        let mut template = vec![Attribute::Label(like.label.as_bytes().to_vec())];
        template.extend(usage_attributes(like.class, &like.flags));
        self.s
            .update_attributes(h, &template)
            .map_err(self.pk("updating attributes"))
    }

    /// Destroys an object (used to remove a copy that failed verification).
    pub fn destroy(&self, handle: u64) -> Result<(), HsmError> {
        // SAFETY: handles come from this token's own listing or unwrap.
        let h = unsafe { ObjectHandle::new_from_raw(handle) };
        self.s.destroy_object(h).map_err(self.pk("destroying an object"))
    }

    /// An HMAC of `data` under a generic secret key: SHA-256, or SHA-1 where the token
    /// refuses the key's size for SHA-256 (SoftHSM wants ≥ 32 bytes there, ≥ 20 for
    /// SHA-1). `None` when the key fits neither.
    pub fn hmac(&self, handle: u64, data: &[u8]) -> Result<Option<Vec<u8>>, HsmError> {
        // SAFETY: as above.
        let h = unsafe { ObjectHandle::new_from_raw(handle) };
        for mech in [Mechanism::Sha256Hmac, Mechanism::Sha1Hmac] {
            match self.s.sign(&mech, h, data) {
                Ok(mac) => return Ok(Some(mac)),
                Err(CkError::Pkcs11(RvError::KeySizeRange, _)) => continue,
                Err(e) => return Err(self.pk("computing an HMAC")(e)),
            }
        }
        Ok(None)
    }

    /// Random bytes from the token's generator.
    pub fn random(&self, n: usize) -> Result<Vec<u8>, HsmError> {
        let mut buf = vec![0u8; n];
        self.s
            .generate_random_slice(&mut buf)
            .map_err(self.pk("generating random bytes"))?;
        Ok(buf)
    }

    /// The lineage fingerprint: a fixed, public 256-bit probe key wrapped under the domain
    /// key (RFC 3394, deterministic), hashed. Equal on every token holding the same domain
    /// key, different otherwise; it reveals nothing of the domain key.
    pub fn lineage_fingerprint(&self) -> Result<String, HsmError> {
        let probe: [u8; 32] = Sha256::digest(b"hsm-sync lineage probe v1").into();
        let key = self
            .s
            .create_object(&[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(CkKeyType::AES),
                Attribute::Token(false),
                Attribute::Extractable(true),
                Attribute::Sensitive(false),
                Attribute::Value(probe.to_vec()),
            ])
            .map_err(self.pk("creating the lineage probe"))?;
        let blob = self.s.wrap_key(&Mechanism::AesKeyWrap, self.domain_key, key);
        let _ = self.s.destroy_object(key);
        let blob = Zeroizing::new(blob.map_err(self.pk("wrapping the lineage probe"))?);
        let mut h = Sha256::new();
        h.update(b"hsm-sync/lineage/v1\0");
        h.update(&blob[..]);
        Ok(hex::encode(&h.finalize()[..8]))
    }

    /// Source half of the lineage proof: a fresh session AES key, wrapped under the domain
    /// key, and its encryption of `challenge`.
    pub fn lineage_offer(&self, challenge: &[u8; 16]) -> Result<(Wrapped, Vec<u8>), HsmError> {
        let key = self
            .s
            .generate_key(
                &Mechanism::AesKeyGen,
                &[
                    Attribute::Class(ObjectClass::SECRET_KEY),
                    Attribute::KeyType(CkKeyType::AES),
                    Attribute::ValueLen(32.into()),
                    Attribute::Token(false),
                    Attribute::Extractable(true),
                    Attribute::Encrypt(true),
                ],
            )
            .map_err(self.pk("generating the lineage session key"))?;
        let result = (|| {
            let blob = self
                .s
                .wrap_key(&WRAP, self.domain_key, key)
                .map_err(self.pk("wrapping the lineage session key"))?;
            let check = self
                .s
                .encrypt(&Mechanism::AesEcb, key, challenge)
                .map_err(self.pk("encrypting the lineage challenge"))?;
            Ok((Wrapped(Zeroizing::new(blob)), check))
        })();
        let _ = self.s.destroy_object(key);
        result
    }

    /// Target half: unwrap the session key under this token's domain key and encrypt the
    /// same challenge. `Err(detail)` when the blob does not unwrap here.
    pub fn lineage_accept(&self, blob: &Wrapped, challenge: &[u8; 16]) -> Result<Result<Vec<u8>, String>, HsmError> {
        let template = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(CkKeyType::AES),
            Attribute::Token(false),
            Attribute::Encrypt(true),
            Attribute::Extractable(false),
        ];
        let key = match self.s.unwrap_key(&WRAP, self.domain_key, &blob.0, &template) {
            Ok(k) => k,
            Err(CkError::Pkcs11(
                rv @ (RvError::WrappedKeyInvalid
                | RvError::EncryptedDataInvalid
                | RvError::WrappedKeyLenRange
                | RvError::UnwrappingKeyHandleInvalid
                | RvError::UnwrappingKeySizeRange
                | RvError::UnwrappingKeyTypeInconsistent
                | RvError::GeneralError),
                _,
            )) => {
                return Ok(Err(format!(
                    "the source's wrapped session key does not unwrap under this token's domain key ({rv})"
                )));
            }
            Err(e) => return Err(self.pk("unwrapping the lineage session key")(e)),
        };
        let out = self
            .s
            .encrypt(&Mechanism::AesEcb, key, challenge)
            .map_err(self.pk("encrypting the lineage challenge"));
        let _ = self.s.destroy_object(key);
        Ok(Ok(out?))
    }
}

/// `CKA_LABEL` of the in-flight journal (see [`TokenSession::journal_write`]).
const JOURNAL_LABEL: &str = "hsm-sync/in-flight";

impl TokenSession {
    fn journal_objects(&self) -> Result<Vec<ObjectHandle>, HsmError> {
        self.s
            .find_objects(&[
                Attribute::Class(ObjectClass::DATA),
                Attribute::Token(true),
                Attribute::Application(b"hsm-sync".to_vec()),
                Attribute::Label(JOURNAL_LABEL.as_bytes().to_vec()),
            ])
            .map_err(self.pk("finding the in-flight journal"))
    }

    /// Records, before any copy is made, which identities this run is about to create on
    /// this token. A process killed inside `C_UnwrapKey` can leave a copy whose value
    /// was never stored (SoftHSM writes an object in steps); the journal lets the next run
    /// tell such a copy from someone else's key, and repair only its own. One `CKO_DATA`
    /// object (`CKA_APPLICATION` `hsm-sync`), replaced each run, removed when a run ends.
    pub fn journal_write(&self, entries: &[String]) -> Result<(), HsmError> {
        self.journal_clear()?;
        self.s
            .create_object(&[
                Attribute::Class(ObjectClass::DATA),
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Application(b"hsm-sync".to_vec()),
                Attribute::Label(JOURNAL_LABEL.as_bytes().to_vec()),
                Attribute::Value(entries.join("\n").into_bytes()),
            ])
            .map_err(self.pk("writing the in-flight journal"))?;
        Ok(())
    }

    /// The identities an interrupted run was creating here (empty when none was).
    pub fn journal_read(&self) -> Result<Vec<String>, HsmError> {
        let mut out = Vec::new();
        for h in self.journal_objects()? {
            let attrs = self
                .s
                .get_attributes(h, &[AttributeType::Value])
                .map_err(self.pk("reading the in-flight journal"))?;
            for a in attrs {
                if let Attribute::Value(v) = a {
                    out.extend(String::from_utf8_lossy(&v).lines().map(String::from));
                }
            }
        }
        Ok(out)
    }

    /// Removes the journal: the run ended and every copy it made was verified or destroyed.
    pub fn journal_clear(&self) -> Result<(), HsmError> {
        for h in self.journal_objects()? {
            self.s
                .destroy_object(h)
                .map_err(self.pk("removing the in-flight journal"))?;
        }
        Ok(())
    }
}
