//! Key fingerprints: how hsm-sync tells two keys equal across tokens without seeing
//! their values. Secret and private keys are fingerprinted by their wrap under the
//! domain key, public keys by their public attributes (CONTRACT.md §1).

use cryptoki::error::{Error as CkError, RvError};
use sha2::{Digest, Sha256};

use super::{HsmError, TokenSession, Wrapped};
use crate::domain::handle::Handle;
use crate::domain::key::{KeyClass, KeyObject, KeyType, PublicParts};

/// A key fingerprint: SHA-256 over a domain-separation tag, the class and the wrap of the
/// key under the domain key with the token profile's mechanism (RFC 5649 for every
/// profile today), first 8 bytes in hex. AES key wrap is
/// deterministic, so equal keys under one lineage give equal fingerprints, and the digest
/// reveals nothing of the key (CONTRACT.md §1; 64 bits, not a 3-byte KCV).
pub(super) fn fingerprint_of(class: KeyClass, blob: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(b"hsm-sync/key-fingerprint/v1\0");
    h.update([class.code()]);
    h.update(blob);
    hex::encode(&h.finalize()[..8])
}

/// A public key's fingerprint: its public attributes hashed (they are public; the domain
/// key is not needed to compare them across tokens).
pub(crate) fn public_fingerprint(key_type: KeyType, p: &PublicParts) -> String {
    let mut h = Sha256::new();
    h.update(b"hsm-sync/public-key-fingerprint/v1\0");
    h.update([key_type.code()]);
    let (params, point) = match key_type {
        KeyType::EcEdwards => (edwards_params(&p.ec_params), edwards_point(&p.ec_point)),
        _ => (p.ec_params.as_slice(), p.ec_point.as_slice()),
    };
    for part in [p.modulus.as_slice(), p.public_exponent.as_slice(), params, point] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    hex::encode(&h.finalize()[..8])
}

/// An Edwards curve's `CKA_EC_PARAMS` as its OID: PKCS#11 3.0 also allows the curve's
/// name as a PrintableString, and Kryoptic gives a copy the OID form whatever its
/// source had (PKCS11-NOTES.md).
fn edwards_params(params: &[u8]) -> &[u8] {
    const ED25519: &[u8] = &[0x06, 0x03, 0x2B, 0x65, 0x70];
    const ED448: &[u8] = &[0x06, 0x03, 0x2B, 0x65, 0x71];
    match params {
        [0x13, 12, rest @ ..] if rest == b"edwards25519" => ED25519,
        [0x13, 10, rest @ ..] if rest == b"edwards448" => ED448,
        _ => params,
    }
}

/// An Edwards point as its raw bytes: SoftHSM wraps it in a DER OCTET STRING
/// (`04 20 …`), Kryoptic gives the 32 (or 57) bytes bare.
fn edwards_point(point: &[u8]) -> &[u8] {
    match point {
        [0x04, n, rest @ ..] if usize::from(*n) == rest.len() && matches!(rest.len(), 32 | 57) => rest,
        _ => point,
    }
}

impl Wrapped {
    /// The fingerprint of the key inside (see [`fingerprint_of`]).
    pub fn fingerprint(&self, class: KeyClass) -> String {
        fingerprint_of(class, &self.0)
    }
}

impl TokenSession {
    /// The fingerprint of a key on this token: public attributes for a public key, the
    /// wrapped blob's digest for others (`None` when it cannot be wrapped).
    pub fn fingerprint(&self, k: &KeyObject) -> Result<Option<String>, HsmError> {
        if k.class == KeyClass::PublicKey {
            return Ok(Some(public_fingerprint(k.key_type, k.public())));
        }
        if k.class == KeyClass::PrivateKey {
            if let Some(fp) = self.private_fingerprint(k)? {
                return Ok(Some(fp));
            }
        }
        if !k.flags.extractable {
            return Ok(None);
        }
        self.fingerprint_at(k.handle, k.class)
    }

    /// A private key's fingerprint from its public parts (CONTRACT §1: PKCS#8 encodings of
    /// one private key differ between makes, its public key does not): an RSA key's own
    /// modulus and exponent, an EC key's point from the public key of its identity on this
    /// token (SoftHSM keeps no `CKA_EC_POINT` on EC private keys). Equal to the public
    /// half's fingerprint. `None` where the public parts are not to be had: the wrap digest
    /// then stands in, which compares keys on tokens of one make only.
    fn private_fingerprint(&self, k: &KeyObject) -> Result<Option<String>, HsmError> {
        let p = k.public();
        match k.key_type {
            KeyType::Rsa if !p.modulus.is_empty() && !p.public_exponent.is_empty() => {
                let parts = PublicParts {
                    modulus: p.modulus.clone(),
                    public_exponent: p.public_exponent.clone(),
                    ..PublicParts::default()
                };
                Ok(Some(public_fingerprint(KeyType::Rsa, &parts)))
            }
            KeyType::Ec | KeyType::EcEdwards => {
                let mut like = k.clone();
                like.class = KeyClass::PublicKey;
                like.public_parts = None;
                match self.find_like(&like)?.as_slice() {
                    [public] if !public.public().ec_point.is_empty() => {
                        Ok(Some(public_fingerprint(k.key_type, public.public())))
                    }
                    _ => Ok(None),
                }
            }
            _ => Ok(None),
        }
    }

    /// The fingerprint of the secret or private key at `handle` (`None` when it cannot be
    /// wrapped): how a copy is verified, in one `C_WrapKey`.
    pub fn fingerprint_at(&self, handle: Handle, class: KeyClass) -> Result<Option<String>, HsmError> {
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
}
