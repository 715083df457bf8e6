//! What a token can do, learned rather than assumed (issue 14, STYLE habit 16): its real
//! mechanism list (every id, raw: cryptoki 0.12 drops the ones it cannot name) and, for
//! each key-wrap mechanism it offers, the format that mechanism really makes. One id
//! means different things on different tokens (0x210A is RFC 5649 on SoftHSM, PKCS#7 +
//! RFC 3394 on NSS softokn), so the probe wraps a known secret under a known key, both
//! session objects, and compares the blob with RFC 5649 and RFC 3394 computed here.
//! Nothing is written to the token.

use aes_kw::KekAes128;
use cryptoki::object::{Attribute, KeyType as CkKeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use serde::Serialize;

use super::raw::RawFns;
use crate::domain::wire::WireFormat;

/// A key-wrap mechanism of one token, with the format it makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct WrapMechanism {
    /// The `CK_MECHANISM_TYPE` given to `C_WrapKey` and `C_UnwrapKey`.
    pub id: u64,
    /// Its PKCS#11 (or vendor) name.
    pub name: &'static str,
    /// The wire format its blobs are.
    pub format: WireFormat,
    /// Whether it zero-pads a value to a multiple of 8 before wrapping (SoftHSM's
    /// 0x210A and 0x2109): a secret of odd length then arrives longer elsewhere.
    pub zero_pads: bool,
}

/// What a probe found a mechanism makes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "made", content = "detail")]
pub enum Made {
    /// RFC 5649 of the value.
    Rfc5649,
    /// RFC 5649 of the value zero-padded to a multiple of 8 (SoftHSM 2.6 0x210A).
    Rfc5649ZeroPad,
    /// RFC 3394, refusing lengths that are not a multiple of 8.
    Rfc3394,
    /// RFC 3394 of the value zero-padded to a multiple of 8.
    Rfc3394ZeroPad,
    /// PKCS#7 padding then RFC 3394 (NSS softokn 0x210A, Kryoptic 0x210C): no standard
    /// format another make reads alike.
    Pkcs7ThenRfc3394,
    /// A blob matching none of the above.
    Unknown,
    /// The token refused the probe (the CKR code).
    Refused(String),
}

impl Made {
    /// The wire format a mechanism that makes this carries, and whether it zero-pads.
    fn wire(&self) -> Option<(WireFormat, bool)> {
        match self {
            Made::Rfc5649 => Some((WireFormat::Rfc5649, false)),
            Made::Rfc5649ZeroPad => Some((WireFormat::Rfc5649, true)),
            Made::Rfc3394 => Some((WireFormat::Rfc3394, false)),
            Made::Rfc3394ZeroPad => Some((WireFormat::Rfc3394, true)),
            _ => None,
        }
    }
}

/// One probed key-wrap mechanism.
#[derive(Debug, Clone, Serialize)]
pub struct WrapProbe {
    /// The mechanism id.
    pub id: u64,
    /// Its name.
    pub name: &'static str,
    /// What it made.
    #[serde(flatten)]
    pub made: Made,
    /// Whether the token lists it for unwrapping too (`CKF_UNWRAP`).
    pub unwraps: bool,
    /// Whether an Ed25519 private key (a session one the probe made) wrapped with it
    /// unwrapped again on this token: SoftHSM 2.6 lists EdDSA but can do neither.
    pub carries_eddsa: bool,
}

/// What one token can do.
#[derive(Debug, Clone, Serialize)]
pub struct Capabilities {
    /// Every mechanism id the token lists.
    pub mechanisms: Vec<u64>,
    /// The key-wrap mechanisms it lists, probed, in order of preference.
    pub wraps: Vec<WrapProbe>,
    /// Whether its objects carry `CKA_UNIQUE_ID` (PKCS#11 3.0; Kryoptic does, SoftHSM 2.6
    /// does not): read from a session object the probe makes and destroys.
    pub unique_id: bool,
}

impl Capabilities {
    /// The mechanism this token uses for `format`: the first probed to make it and to
    /// unwrap, a true format before a zero-padding one.
    pub fn mechanism_for(&self, format: WireFormat) -> Option<WrapMechanism> {
        let usable = self.wraps.iter().filter(|w| w.unwraps).filter_map(|w| {
            let (f, zero_pads) = w.made.wire()?;
            (f == format).then_some(WrapMechanism {
                id: w.id,
                name: w.name,
                format: f,
                zero_pads,
            })
        });
        usable.min_by_key(|m| m.zero_pads)
    }

    /// The formats this token can make and read, the preferred first.
    pub fn formats(&self) -> Vec<WireFormat> {
        WireFormat::ALL
            .into_iter()
            .filter(|f| self.mechanism_for(*f).is_some())
            .collect()
    }

    /// The key types this token lists no mechanism for: no key generation and no use of
    /// the type, so a copy of such a key could not be made or used here. With `wrap`,
    /// the mechanism this run wraps with: EdDSA keys count as missing unless the probe's
    /// Ed25519 key came through it.
    pub fn missing_key_types(&self, wrap: Option<u64>) -> Vec<crate::domain::key::KeyType> {
        use crate::domain::key::KeyType;
        let any = |ids: &[u64]| ids.iter().any(|id| self.offers(*id));
        let mut out = Vec::new();
        if !any(&[
            cryptoki_sys::CKM_DES3_KEY_GEN,
            cryptoki_sys::CKM_DES3_ECB,
            cryptoki_sys::CKM_DES3_CBC,
            cryptoki_sys::CKM_DES3_CBC_PAD,
        ]) {
            out.push(KeyType::Des3);
        }
        if !any(&[cryptoki_sys::CKM_RSA_PKCS_KEY_PAIR_GEN, cryptoki_sys::CKM_RSA_PKCS]) {
            out.push(KeyType::Rsa);
        }
        if !any(&[cryptoki_sys::CKM_EC_KEY_PAIR_GEN, cryptoki_sys::CKM_ECDSA]) {
            out.push(KeyType::Ec);
        }
        // An HMAC key type is used (and its copy proven) by its own mechanism only: a
        // token without it would fail the copy's proof rather than block it up front.
        // A generic secret is left out: it may serve derivation, not HMAC.
        if !any(&[cryptoki_sys::CKM_SHA_1_HMAC, cryptoki_sys::CKM_SHA256_HMAC]) {
            out.extend([KeyType::Sha1Hmac, KeyType::Sha256Hmac]);
        }
        for (t, m) in [
            (KeyType::Sha224Hmac, cryptoki_sys::CKM_SHA224_HMAC),
            (KeyType::Sha384Hmac, cryptoki_sys::CKM_SHA384_HMAC),
            (KeyType::Sha512Hmac, cryptoki_sys::CKM_SHA512_HMAC),
        ] {
            if !self.offers(m) {
                out.push(t);
            }
        }
        let eddsa = self.offers(cryptoki_sys::CKM_EDDSA)
            && self
                .wraps
                .iter()
                .any(|w| w.carries_eddsa && wrap.is_none_or(|id| id == w.id));
        if !eddsa {
            out.push(KeyType::EcEdwards);
        }
        out
    }

    /// Whether the token lists mechanism `id`.
    pub fn offers(&self, id: u64) -> bool {
        self.mechanisms.contains(&id)
    }
}

/// What the probe found, one `NAME: made` per wrap mechanism, for messages.
pub(crate) fn summary(c: &Capabilities) -> String {
    if c.wraps.is_empty() {
        return "it lists none of CKM_AES_KEY_WRAP_KWP, CKM_AES_KEY_WRAP_PAD, CKM_AES_KEY_WRAP".into();
    }
    c.wraps
        .iter()
        .map(|w| format!("{} makes {}", w.name, w.made.describe()))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Made {
    /// In words, for messages.
    pub fn describe(&self) -> String {
        match self {
            Made::Rfc5649 => "RFC 5649".into(),
            Made::Rfc5649ZeroPad => "RFC 5649 of the value zero-padded to 8".into(),
            Made::Rfc3394 => "RFC 3394".into(),
            Made::Rfc3394ZeroPad => "RFC 3394 of the value zero-padded to 8".into(),
            Made::Pkcs7ThenRfc3394 => "PKCS#7 padding then RFC 3394 (not portable)".into(),
            Made::Unknown => "an unknown format".into(),
            Made::Refused(ckr) => format!("nothing ({ckr})"),
        }
    }
}

/// The standard key-wrap mechanisms a probe tries, in order of preference; a profile adds
/// its vendor's ids (`Profile::vendor_wraps`).
pub(crate) const STANDARD_WRAPS: &[(u64, &str)] = &[
    (cryptoki_sys::CKM_AES_KEY_WRAP_KWP, "CKM_AES_KEY_WRAP_KWP"),
    (cryptoki_sys::CKM_AES_KEY_WRAP_PAD, "CKM_AES_KEY_WRAP_PAD"),
    (cryptoki_sys::CKM_AES_KEY_WRAP, "CKM_AES_KEY_WRAP"),
];

/// The probe's wrapping key and secrets: public constants, session objects only.
const PROBE_KEK: [u8; 16] = *b"hsm-sync probe k";
const PROBE_ODD: [u8; 20] = *b"hsm-sync probe 20 by";
const PROBE_EVEN: [u8; 24] = *b"hsm-sync probe 24 bytes.";

/// Probes a logged-in token through session `s` (on `slot`): its mechanism list, then
/// each candidate wrap mechanism it lists. Only session objects are made, and destroyed.
pub(crate) fn probe(
    raw: &RawFns,
    s: &Session,
    slot: u64,
    vendor: &[(u64, &'static str)],
) -> Result<Capabilities, cryptoki::error::Error> {
    let mechanisms = raw.mechanism_list(slot as cryptoki_sys::CK_SLOT_ID)?;
    let mut wraps = Vec::new();
    let candidates = STANDARD_WRAPS.iter().chain(vendor);
    let present: Vec<(u64, &'static str)> = candidates.filter(|(id, _)| mechanisms.contains(id)).copied().collect();
    if present.is_empty() {
        let unique_id = has_unique_id(s);
        return Ok(Capabilities {
            mechanisms,
            wraps,
            unique_id,
        });
    }
    let secret = |value: &[u8], wrap: bool, key_type: CkKeyType| {
        s.create_object(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(key_type),
            Attribute::Token(false),
            Attribute::Private(false),
            Attribute::Sensitive(false),
            Attribute::Extractable(true),
            Attribute::Wrap(wrap),
            Attribute::Unwrap(wrap),
            Attribute::Value(value.to_vec()),
        ])
    };
    let kek = secret(&PROBE_KEK, true, CkKeyType::AES)?;
    let made = (|| {
        let odd = secret(&PROBE_ODD, false, CkKeyType::GENERIC_SECRET)?;
        let even = secret(&PROBE_EVEN, false, CkKeyType::GENERIC_SECRET);
        // Only where the token lists both EdDSA mechanisms (a keygen of ~1 ms).
        let ed25519 = (mechanisms.contains(&cryptoki_sys::CKM_EC_EDWARDS_KEY_PAIR_GEN)
            && mechanisms.contains(&cryptoki_sys::CKM_EDDSA))
        .then(|| ed25519_pair(s).ok())
        .flatten();
        let out = present
            .iter()
            .map(|&(id, name)| {
                let made = match &even {
                    Ok(even) => classify(raw, s, id, kek, odd, *even),
                    Err(e) => Made::Refused(super::describe(e)),
                };
                let unwraps = raw
                    .mechanism_flags(slot as cryptoki_sys::CK_SLOT_ID, id)
                    .map_or(true, |f| f & cryptoki_sys::CKF_UNWRAP != 0);
                let carries_eddsa = unwraps
                    && made.wire().is_some()
                    && ed25519.is_some_and(|(_, private)| round_trips(raw, s, id, kek, private));
                WrapProbe {
                    id,
                    name,
                    made,
                    unwraps,
                    carries_eddsa,
                }
            })
            .collect::<Vec<_>>();
        let _ = s.destroy_object(odd);
        if let Ok(even) = even {
            let _ = s.destroy_object(even);
        }
        if let Some((public, private)) = ed25519 {
            let _ = s.destroy_object(public);
            let _ = s.destroy_object(private);
        }
        Ok::<_, cryptoki::error::Error>(out)
    })();
    let _ = s.destroy_object(kek);
    wraps.extend(made?);
    Ok(Capabilities {
        mechanisms,
        wraps,
        unique_id: has_unique_id(s),
    })
}

/// Whether a session object made on `s` has a `CKA_UNIQUE_ID` (it is destroyed again).
fn has_unique_id(s: &Session) -> bool {
    use cryptoki::object::AttributeType;
    let Ok(h) = s.create_object(&[
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(CkKeyType::GENERIC_SECRET),
        Attribute::Token(false),
        Attribute::Value(PROBE_EVEN.to_vec()),
    ]) else {
        return false;
    };
    let found = s
        .get_attributes(h, &[AttributeType::UniqueId])
        .is_ok_and(|a| a.iter().any(|a| matches!(a, Attribute::UniqueId(v) if !v.is_empty())));
    let _ = s.destroy_object(h);
    found
}

/// The DER of the Ed25519 curve's OID (1.3.101.112), as `CKA_EC_PARAMS` names it.
const ED25519_OID: [u8; 5] = [0x06, 0x03, 0x2B, 0x65, 0x70];

/// A session Ed25519 key pair (public, private), the private half extractable.
fn ed25519_pair(s: &Session) -> Result<(ObjectHandle, ObjectHandle), cryptoki::error::Error> {
    use cryptoki::mechanism::Mechanism;
    s.generate_key_pair(
        &Mechanism::EccEdwardsKeyPairGen,
        &[
            Attribute::Token(false),
            Attribute::Verify(true),
            Attribute::EcParams(ED25519_OID.to_vec()),
        ],
        &[
            Attribute::Token(false),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(true),
            Attribute::Sign(true),
        ],
    )
}

/// Whether `private` wrapped under `kek` with mechanism `id` unwraps again as a session
/// Ed25519 private key on this token (the copy is destroyed).
fn round_trips(raw: &RawFns, s: &Session, id: u64, kek: ObjectHandle, private: ObjectHandle) -> bool {
    let Ok(blob) = raw.wrap_key(s, id, kek, private, 512) else {
        return false;
    };
    let template = [
        Attribute::Class(ObjectClass::PRIVATE_KEY),
        Attribute::Token(false),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Sign(true),
    ];
    match raw.unwrap_key(s, id, kek, &blob, cryptoki_sys::CKK_EC_EDWARDS, &template) {
        Ok(copy) => {
            let _ = s.destroy_object(copy);
            true
        }
        Err(_) => false,
    }
}

/// What mechanism `id` makes of the probe's odd secret (and, if it refuses odd lengths,
/// of the even one), compared with RFC 5649 and RFC 3394 computed locally.
fn classify(raw: &RawFns, s: &Session, id: u64, kek: ObjectHandle, odd: ObjectHandle, even: ObjectHandle) -> Made {
    let local = KekAes128::new(&PROBE_KEK.into());
    let padded = |v: &[u8]| {
        let mut p = v.to_vec();
        p.resize(v.len().div_ceil(8) * 8, 0);
        p
    };
    let pkcs7 = |v: &[u8]| {
        let n = 8 - v.len() % 8;
        let mut p = v.to_vec();
        p.extend(std::iter::repeat_n(n as u8, n));
        p
    };
    let kwp = |v: &[u8]| local.wrap_with_padding_vec(v).ok();
    let kw = |v: &[u8]| local.wrap_vec(v).ok();
    match raw.wrap_key(s, id, kek, odd, 256) {
        Ok(blob) => {
            let b = Some(blob.to_vec());
            if b == kwp(&PROBE_ODD) {
                Made::Rfc5649
            } else if b == kwp(&padded(&PROBE_ODD)) {
                Made::Rfc5649ZeroPad
            } else if b == kw(&padded(&PROBE_ODD)) {
                Made::Rfc3394ZeroPad
            } else if b == kw(&pkcs7(&PROBE_ODD)) {
                Made::Pkcs7ThenRfc3394
            } else {
                Made::Unknown
            }
        }
        Err(first) => match raw.wrap_key(s, id, kek, even, 256) {
            Ok(blob) if Some(blob.to_vec()) == kw(&PROBE_EVEN) => Made::Rfc3394,
            Ok(_) => Made::Unknown,
            Err(_) => Made::Refused(super::describe(&first)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(wraps: Vec<(u64, Made, bool)>) -> Capabilities {
        Capabilities {
            mechanisms: wraps.iter().map(|w| w.0).collect(),
            wraps: wraps
                .into_iter()
                .map(|(id, made, unwraps)| WrapProbe {
                    id,
                    name: "m",
                    made,
                    unwraps,
                    carries_eddsa: false,
                })
                .collect(),
            unique_id: false,
        }
    }

    #[test]
    fn a_true_format_is_preferred_to_a_zero_padding_one() {
        let c = caps(vec![
            (0x210A, Made::Rfc5649ZeroPad, true),
            (0x210B, Made::Rfc5649, true),
        ]);
        let m = c.mechanism_for(WireFormat::Rfc5649).expect("rfc5649");
        assert_eq!((m.id, m.zero_pads), (0x210B, false));
        assert_eq!(c.formats(), vec![WireFormat::Rfc5649]);
    }

    #[test]
    fn pkcs7_refused_and_unwrap_less_mechanisms_carry_nothing() {
        let c = caps(vec![
            (0x210A, Made::Pkcs7ThenRfc3394, true),
            (0x210B, Made::Rfc5649, false),
            (0x2109, Made::Refused("CKR_MECHANISM_INVALID".into()), true),
        ]);
        assert!(c.formats().is_empty());
    }
}
