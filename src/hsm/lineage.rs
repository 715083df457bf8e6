//! Lineage: whether two tokens hold the same domain key (clones of one HSM), proved
//! before any key moves. A fingerprint to pin in the plan, and a challenge that a key
//! wrapped on one token must answer after unwrapping on the other.

use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, KeyType as CkKeyType, ObjectClass};
use sha2::{Digest, Sha256};

use super::{trace, HsmError, TokenSession, Wrapped};

impl TokenSession {
    /// The lineage fingerprint: a fixed, public 256-bit probe key wrapped under the domain
    /// key (RFC 3394, deterministic), hashed. Equal on every token holding the same domain
    /// key, different otherwise; it reveals nothing of the domain key.
    pub fn lineage_fingerprint(&self) -> Result<String, HsmError> {
        let probe: [u8; 32] = Sha256::digest(b"hsm-sync lineage probe v1").into();
        let key = trace::call("C_CreateObject", || {
            self.s.create_object(&[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(CkKeyType::AES),
                Attribute::Token(false),
                Attribute::Extractable(true),
                Attribute::Sensitive(false),
                Attribute::Value(probe.to_vec()),
            ])
        })
        .map_err(self.pk("creating the lineage probe"))?;
        // RFC 3394 of a 32-byte value is one answer on every make; a token without
        // CKM_AES_KEY_WRAP (CloudHSM SDK5 offers only its vendor RFC 5649) digests its
        // pair format instead, under another tag.
        let (blob, tag): (_, &[u8]) =
            match self
                .raw
                .wrap_key(&self.s, cryptoki_sys::CKM_AES_KEY_WRAP, self.domain_key, key, 64)
            {
                Err(CkError::Pkcs11(RvError::MechanismInvalid, _)) => (
                    self.raw.wrap_key(&self.s, self.wrap.id, self.domain_key, key, 64),
                    b"hsm-sync/lineage/v2-kwp\0",
                ),
                other => (other, b"hsm-sync/lineage/v1\0"),
            };
        let _ = self.s.destroy_object(key);
        let blob = blob.map_err(self.pk("wrapping the lineage probe"))?;
        let mut h = Sha256::new();
        h.update(tag);
        h.update(&blob[..]);
        Ok(hex::encode(&h.finalize()[..8]))
    }

    /// Source half of the lineage proof: a fresh session AES key, wrapped under the domain
    /// key, and its encryption of `challenge`.
    pub fn lineage_offer(&self, challenge: &[u8; 16]) -> Result<(Wrapped, Vec<u8>), HsmError> {
        let key = trace::call("C_GenerateKey", || {
            self.s.generate_key(
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
        })
        .map_err(self.pk("generating the lineage session key"))?;
        let result = (|| {
            let blob = self
                .raw
                .wrap_key(&self.s, self.wrap.id, self.domain_key, key, 64)
                .map_err(self.pk("wrapping the lineage session key"))?;
            let check = trace::call("C_Encrypt", || self.s.encrypt(&Mechanism::AesEcb, key, challenge))
                .map_err(self.pk("encrypting the lineage challenge"))?;
            Ok((Wrapped(blob), check))
        })();
        let _ = trace::call("C_DestroyObject", || self.s.destroy_object(key));
        result
    }

    /// Target half: unwrap the session key under this token's domain key and encrypt the
    /// same challenge. `Err(detail)` when the blob does not unwrap here.
    pub fn lineage_accept(&self, blob: &Wrapped, challenge: &[u8; 16]) -> Result<Result<Vec<u8>, String>, HsmError> {
        let template = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Token(false),
            Attribute::Encrypt(true),
            Attribute::Extractable(false),
        ];
        let key = match self.raw.unwrap_key(
            &self.s,
            self.wrap.id,
            self.domain_key,
            &blob.0,
            cryptoki_sys::CKK_AES,
            &template,
        ) {
            Ok(k) => k,
            Err(
                e @ CkError::Pkcs11(
                    RvError::WrappedKeyInvalid
                    | RvError::EncryptedDataInvalid
                    | RvError::WrappedKeyLenRange
                    | RvError::UnwrappingKeyHandleInvalid
                    | RvError::UnwrappingKeySizeRange
                    | RvError::UnwrappingKeyTypeInconsistent
                    | RvError::GeneralError
                    // Kryoptic's answer to a blob wrapped under another key.
                    | RvError::DeviceError,
                    _,
                ),
            ) => {
                // The CKR code an operator can look up, never cryptoki's stock prose
                // ("Some horrible, unrecoverable error …") in the middle of a DR runbook.
                return Ok(Err(format!(
                    "the source's wrapped session key does not unwrap under this token's domain key ({}): the two tokens hold different domain keys",
                    super::describe(&e)
                )));
            }
            Err(e) => return Err(self.pk("unwrapping the lineage session key")(e)),
        };
        let out = trace::call("C_Encrypt", || self.s.encrypt(&Mechanism::AesEcb, key, challenge))
            .map_err(self.pk("encrypting the lineage challenge"));
        let _ = trace::call("C_DestroyObject", || self.s.destroy_object(key));
        Ok(Ok(out?))
    }
}
