//! The key-kind table: per class and type, how a key travels between tokens, how a copy
//! is proven to be the same key, which usage flags `update` may set, and what blocks it.
//! A new key type is a row here (and its PKCS#11 code in `hsm/attributes.rs`), not an
//! edit in five files (issue 13).

use super::key::{KeyClass, KeyFlags, KeyObject, KeyType};
use super::reason::Reason;
use super::wire::WireFormat;

/// How a key's material reaches the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Travel {
    /// Wrapped under the domain key on the source, unwrapped on the target (secret keys
    /// as their value, private keys as PKCS#8).
    Wrapped,
    /// Rebuilt on the target from the source's public attributes, which are public.
    PublicAttributes,
}

/// How a copy is proven to hold the source's key material.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proof {
    /// The copy, wrapped on the target, digests to the source's fingerprint.
    WrapDigest,
    /// The copy's public attributes, read back, digest to the source's.
    PublicAttributes,
}

/// The public attributes a kind needs on the source to travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// Nothing beyond the key itself.
    Nothing,
    /// `CKA_MODULUS` and `CKA_PUBLIC_EXPONENT`.
    RsaPublic,
    /// `CKA_EC_PARAMS` and `CKA_EC_POINT`.
    EcPublic,
}

/// One row of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyKind {
    /// Object class.
    pub class: KeyClass,
    /// Key type.
    pub key_type: KeyType,
    /// How it travels.
    pub travel: Travel,
    /// How a copy is proven.
    pub proof: Proof,
    /// What the source must show for it to travel.
    pub needs: Needs,
    /// Whether a value whose length is not a multiple of 8 arrives zero-padded (AES key
    /// wrap pads the value; only generic secrets have free lengths), so that only
    /// HMAC-only keys may travel and their copies are proven by an HMAC as well.
    pub zero_padded_when_odd: bool,
}

const fn secret(key_type: KeyType, zero_padded_when_odd: bool) -> KeyKind {
    KeyKind {
        class: KeyClass::SecretKey,
        key_type,
        travel: Travel::Wrapped,
        proof: Proof::WrapDigest,
        needs: Needs::Nothing,
        zero_padded_when_odd,
    }
}

const fn pair(class: KeyClass, key_type: KeyType, needs: Needs) -> KeyKind {
    let public = matches!(class, KeyClass::PublicKey);
    KeyKind {
        class,
        key_type,
        travel: if public {
            Travel::PublicAttributes
        } else {
            Travel::Wrapped
        },
        proof: if public {
            Proof::PublicAttributes
        } else {
            Proof::WrapDigest
        },
        needs: if public { needs } else { Needs::Nothing },
        zero_padded_when_odd: false,
    }
}

/// Every kind hsm-sync copies. Edwards-curve pairs (Ed25519) travel where both tokens can
/// wrap and unwrap them (the probe tries: SoftHSM 2.6 cannot, PKCS11-NOTES.md), proven by
/// an EdDSA signature; not the Montgomery curves (X25519…), which sign nothing a copy
/// could be proven by; [`blockers`] says so.
pub const KINDS: &[KeyKind] = &[
    secret(KeyType::Aes, false),
    secret(KeyType::GenericSecret, true),
    secret(KeyType::Des3, false),
    // The HMAC key types travel as generic secrets do (a value of any length).
    secret(KeyType::Sha1Hmac, true),
    secret(KeyType::Sha224Hmac, true),
    secret(KeyType::Sha256Hmac, true),
    secret(KeyType::Sha384Hmac, true),
    secret(KeyType::Sha512Hmac, true),
    pair(KeyClass::PrivateKey, KeyType::Rsa, Needs::RsaPublic),
    pair(KeyClass::PrivateKey, KeyType::Ec, Needs::EcPublic),
    pair(KeyClass::PublicKey, KeyType::Rsa, Needs::RsaPublic),
    pair(KeyClass::PublicKey, KeyType::Ec, Needs::EcPublic),
    pair(KeyClass::PrivateKey, KeyType::EcEdwards, Needs::EcPublic),
    pair(KeyClass::PublicKey, KeyType::EcEdwards, Needs::EcPublic),
];

/// The row of a class and type, if hsm-sync copies it.
pub fn kind(class: KeyClass, key_type: KeyType) -> Option<&'static KeyKind> {
    KINDS.iter().find(|k| k.class == class && k.key_type == key_type)
}

/// A usage flag `update` can set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// `CKA_ENCRYPT`
    Encrypt,
    /// `CKA_DECRYPT`
    Decrypt,
    /// `CKA_SIGN`
    Sign,
    /// `CKA_VERIFY`
    Verify,
    /// `CKA_WRAP`
    Wrap,
    /// `CKA_UNWRAP`
    Unwrap,
    /// `CKA_DERIVE`
    Derive,
    /// `CKA_SIGN_RECOVER`
    SignRecover,
    /// `CKA_VERIFY_RECOVER`
    VerifyRecover,
}

impl Usage {
    /// The name in drift details (`drifted: label, encrypt`).
    pub fn name(self) -> &'static str {
        match self {
            Usage::Encrypt => "encrypt",
            Usage::Decrypt => "decrypt",
            Usage::Sign => "sign",
            Usage::Verify => "verify",
            Usage::Wrap => "wrap",
            Usage::Unwrap => "unwrap",
            Usage::Derive => "derive",
            Usage::SignRecover => "sign_recover",
            Usage::VerifyRecover => "verify_recover",
        }
    }

    /// The flag's value in `f`.
    pub fn of(self, f: &KeyFlags) -> bool {
        match self {
            Usage::Encrypt => f.encrypt,
            Usage::Decrypt => f.decrypt,
            Usage::Sign => f.sign,
            Usage::Verify => f.verify,
            Usage::Wrap => f.wrap,
            Usage::Unwrap => f.unwrap,
            Usage::Derive => f.derive,
            Usage::SignRecover => f.sign_recover,
            Usage::VerifyRecover => f.verify_recover,
        }
    }
}

/// The usage flags a class carries (PKCS#11 defines each for some classes only), in the
/// order drift details list them.
pub fn usages(class: KeyClass) -> &'static [Usage] {
    use Usage::*;
    match class {
        KeyClass::SecretKey => &[Encrypt, Decrypt, Sign, Verify, Wrap, Unwrap, Derive],
        KeyClass::PrivateKey => &[Decrypt, Sign, Unwrap, Derive, SignRecover],
        KeyClass::PublicKey => &[Encrypt, Verify, Wrap, Derive, VerifyRecover],
    }
}

/// What the table itself says blocks a key: a kind hsm-sync does not copy, a public key
/// without its public attributes, an odd-length secret that is not HMAC-only. (Owning and
/// extractability depend on the role and the token, and are the diff's to judge.)
pub fn blockers(k: &KeyObject) -> Vec<(Reason, Option<String>)> {
    let Some(kind) = kind(k.class, k.key_type) else {
        // A type PKCS#11 names is never `unsupported-key-type` (issue 14 item 4): it is
        // what no token pair here can carry.
        if k.key_type == KeyType::EcMontgomery {
            return vec![(
                Reason::NoCommonMechanism,
                Some("Montgomery curve keys (X25519, X448) agree keys and sign nothing, so no check across the pair could prove a copy: not copied".into()),
            )];
        }
        return vec![(Reason::UnsupportedKeyType, None)];
    };
    let p = k.public();
    let shown = match kind.needs {
        Needs::Nothing => true,
        Needs::RsaPublic => !p.modulus.is_empty() && !p.public_exponent.is_empty(),
        Needs::EcPublic => !p.ec_params.is_empty() && !p.ec_point.is_empty(),
    };
    if !shown {
        return vec![(
            Reason::UnsupportedKeyType,
            Some("the source does not show this public key's attributes".into()),
        )];
    }
    let mut out = Vec::new();
    if let Some(len) = odd_length(kind, k) {
        let f = &k.flags;
        if f.encrypt || f.decrypt || f.wrap || f.unwrap || f.derive {
            out.push((
                Reason::OddLengthSecret,
                Some(format!(
                    "a {len}-byte generic secret would arrive zero-padded to {} bytes; only HMAC-only keys (sign/verify) are synced",
                    len.div_ceil(8) * 8
                )),
            ));
        }
    }
    out
}

/// Why `k` cannot travel in `format`, if it cannot (CONTRACT §1, reason
/// `no-common-mechanism`): RFC 3394 carries only values whose length is a multiple of 8
/// and at least 16, so no private key (PKCS#8 has any length) and no odd-length secret.
pub fn not_carried(k: &KeyObject, format: WireFormat) -> Option<String> {
    match (format, k.class) {
        (WireFormat::Rfc5649, _) | (_, KeyClass::PublicKey) => None,
        (WireFormat::Rfc3394, KeyClass::PrivateKey) => {
            Some("the pair shares only RFC 3394, which cannot carry a private key (PKCS#8 of any length)".into())
        }
        (WireFormat::Rfc3394, KeyClass::SecretKey) => match k.value_len {
            Some(n) if format.carries(n as usize) => None,
            Some(n) => Some(format!(
                "the pair shares only RFC 3394, which carries values of 16, 24, 32… bytes, not {n}"
            )),
            // DES3 (24) and keys whose length the token hides: the copy's wrap decides.
            None => None,
        },
    }
}

/// The value length of a key that arrives zero-padded, if this one does.
fn odd_length(kind: &KeyKind, k: &KeyObject) -> Option<u64> {
    let len = k.value_len?;
    (kind.zero_padded_when_odd && len % 8 != 0).then_some(len)
}

/// Whether a copy of `k` must also be proven by an HMAC: an odd-length secret that signs
/// arrives zero-padded, so its wrap digest differs in length semantics and HMAC results
/// are what shows it is the same key.
pub fn proven_by_hmac(k: &KeyObject) -> bool {
    kind(k.class, k.key_type).is_some_and(|kind| odd_length(kind, k).is_some() && k.flags.sign)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(class: KeyClass, key_type: KeyType) -> KeyObject {
        KeyObject {
            handle: crate::domain::handle::Handle::fixture(1),
            class,
            key_type,
            id: smallvec::smallvec![1],
            label: "k".into(),
            flags: KeyFlags::default(),
            value_len: None,
            public_parts: None,
            fingerprint: crate::domain::fingerprint::Fingerprint::Deferred,
        }
    }

    #[test]
    fn every_row_is_consistent() {
        for k in KINDS {
            assert_eq!(
                k.class == KeyClass::PublicKey,
                k.travel == Travel::PublicAttributes,
                "{k:?}"
            );
            assert_eq!(k.travel == Travel::Wrapped, k.proof == Proof::WrapDigest, "{k:?}");
            assert_eq!(kind(k.class, k.key_type), Some(k), "one row per class and type");
        }
    }

    #[test]
    fn a_key_type_pkcs11_names_is_never_unsupported() {
        for c in [KeyClass::PrivateKey, KeyClass::PublicKey] {
            let b = blockers(&key(c, KeyType::EcMontgomery));
            assert_eq!(b.len(), 1, "{c:?}: {b:?}");
            assert_eq!(b[0].0, Reason::NoCommonMechanism, "{c:?}: {b:?}");
        }
        // Edwards keys are a kind: the tokens' probes decide whether they travel.
        assert!(kind(KeyClass::PrivateKey, KeyType::EcEdwards).is_some());
        let mut ed = key(KeyClass::PublicKey, KeyType::EcEdwards);
        ed.public_parts = Some(Box::new(crate::domain::key::PublicParts {
            ec_params: vec![6, 3, 0x2B, 0x65, 0x70],
            ec_point: vec![7; 32],
            ..Default::default()
        }));
        assert!(blockers(&ed).is_empty(), "{:?}", blockers(&ed));
        assert_eq!(
            blockers(&key(KeyClass::SecretKey, KeyType::Other))[0].0,
            Reason::UnsupportedKeyType,
            "a type hsm-sync cannot name still is"
        );
    }

    #[test]
    fn the_table_decides_what_is_blocked() {
        assert_eq!(
            blockers(&key(KeyClass::SecretKey, KeyType::Other)),
            vec![(Reason::UnsupportedKeyType, None)]
        );
        let bare_public = blockers(&key(KeyClass::PublicKey, KeyType::Rsa));
        assert_eq!(bare_public[0].0, Reason::UnsupportedKeyType);
        assert!(blockers(&key(KeyClass::SecretKey, KeyType::Aes)).is_empty());

        let mut odd = key(KeyClass::SecretKey, KeyType::GenericSecret);
        odd.value_len = Some(20);
        odd.flags.sign = true;
        assert!(blockers(&odd).is_empty(), "an HMAC-only odd secret travels");
        assert!(proven_by_hmac(&odd));
        odd.flags.encrypt = true;
        let b = blockers(&odd);
        assert_eq!(b[0].0, Reason::OddLengthSecret);
        assert!(b[0].1.as_deref().unwrap_or("").contains("zero-padded to 24 bytes"));
    }

    #[test]
    fn the_hmac_key_types_travel_as_generic_secrets_do() {
        for t in [
            KeyType::Sha1Hmac,
            KeyType::Sha224Hmac,
            KeyType::Sha256Hmac,
            KeyType::Sha384Hmac,
            KeyType::Sha512Hmac,
        ] {
            let mut k = key(KeyClass::SecretKey, t);
            k.flags.sign = true;
            k.value_len = Some(48);
            assert!(blockers(&k).is_empty(), "{t:?}");
            assert!(!proven_by_hmac(&k), "{t:?}: a multiple of 8 is proven by its wrap");
            k.value_len = Some(28);
            assert!(blockers(&k).is_empty(), "{t:?}: HMAC-only, so an odd length travels");
            assert!(proven_by_hmac(&k), "{t:?}");
            k.flags.derive = true;
            assert_eq!(blockers(&k)[0].0, Reason::OddLengthSecret, "{t:?}");
        }
    }

    #[test]
    fn usages_follow_the_class() {
        assert!(!usages(KeyClass::SecretKey).contains(&Usage::SignRecover));
        assert!(usages(KeyClass::PrivateKey).contains(&Usage::SignRecover));
        assert!(!usages(KeyClass::PublicKey).contains(&Usage::Decrypt));
    }
}
