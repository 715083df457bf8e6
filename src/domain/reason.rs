//! Why a key is blocked, in conflict or updated (CONTRACT.md §3). A reason is a bare,
//! stable code a pipeline can `select(.reason == "not-owned")` on; the human explanation
//! of one item travels beside it as `detail`, and the generic advice for a code is
//! [`Reason::help`].

use serde::{Deserialize, Serialize};

/// A reason code. Serialized as its kebab-case code and nothing else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// The key was made with `CKA_EXTRACTABLE` false, or its wrap failed.
    NotExtractable,
    /// A crypto-user does not own the key (`CKA_PRIVATE` false).
    NotOwned,
    /// hsm-sync cannot copy this class and type.
    UnsupportedKeyType,
    /// A selector names a key the source does not hold.
    NotFoundOnSource,
    /// No wire format common to the pair carries this key.
    NoCommonMechanism,
    /// A generic secret whose length is not a multiple of 8 that is not HMAC-only.
    OddLengthSecret,
    /// The other half of this key pair is blocked.
    PairIncomplete,
    /// Same key material, drifted attributes that `update` sets.
    Drifted,
    /// Same identity, different key material.
    DifferentKeyMaterial,
    /// Several source objects share the identity.
    DuplicateOnSource,
    /// Several target objects share the identity.
    DuplicateOnTarget,
    /// A copy an interrupted run left unverified is replaced.
    Repair,
    /// The target's copy cannot be fingerprinted.
    CannotCompare,
    /// `CKA_PRIVATE`/`CKA_SENSITIVE`/`CKA_EXTRACTABLE` differ; `update` never changes them.
    ProtectionDiffers,
    /// Drifted attributes on a copy with `CKA_MODIFIABLE` false.
    NotModifiable,
    /// Same identity and value, another `CKA_KEY_TYPE` (an AES key and a generic secret
    /// of one value wrap alike): a copy keeps its source's type, so it is not the copy.
    DifferentKeyType,
}

impl Reason {
    /// Every reason, in declaration order: what the report's schema lists.
    pub const ALL: [Reason; 16] = [
        Reason::NotExtractable,
        Reason::NotOwned,
        Reason::UnsupportedKeyType,
        Reason::NotFoundOnSource,
        Reason::NoCommonMechanism,
        Reason::OddLengthSecret,
        Reason::PairIncomplete,
        Reason::Drifted,
        Reason::DifferentKeyMaterial,
        Reason::DuplicateOnSource,
        Reason::DuplicateOnTarget,
        Reason::Repair,
        Reason::CannotCompare,
        Reason::ProtectionDiffers,
        Reason::NotModifiable,
        Reason::DifferentKeyType,
    ];

    /// The code as it appears in reports and diffs.
    pub fn code(self) -> &'static str {
        match self {
            Reason::NotExtractable => "not-extractable",
            Reason::NotOwned => "not-owned",
            Reason::UnsupportedKeyType => "unsupported-key-type",
            Reason::NotFoundOnSource => "not-found-on-source",
            Reason::NoCommonMechanism => "no-common-mechanism",
            Reason::OddLengthSecret => "odd-length-secret",
            Reason::PairIncomplete => "pair-incomplete",
            Reason::Drifted => "drifted",
            Reason::DifferentKeyMaterial => "different-key-material",
            Reason::DuplicateOnSource => "duplicate-on-source",
            Reason::DuplicateOnTarget => "duplicate-on-target",
            Reason::Repair => "repair",
            Reason::CannotCompare => "cannot-compare",
            Reason::ProtectionDiffers => "protection-differs",
            Reason::NotModifiable => "not-modifiable",
            Reason::DifferentKeyType => "different-key-type",
        }
    }

    /// What an operator can do about it, where there is something to say.
    pub fn help(self) -> Option<&'static str> {
        Some(match self {
            Reason::NotExtractable => "the key was made with CKA_EXTRACTABLE false and can never leave its token",
            Reason::NotOwned => {
                "made with CKA_PRIVATE false — pkcs11-tool's default — so a crypto-user does not own it"
            }
            Reason::UnsupportedKeyType => "hsm-sync copies AES, DES3, generic secret, HMAC, RSA and EC keys",
            Reason::NotFoundOnSource => "check the selector against `hsm-sync inventory PLAN SOURCE`",
            Reason::OddLengthSecret => {
                "an odd-length generic secret arrives zero-padded; only HMAC-only keys (sign/verify) are synced"
            }
            Reason::PairIncomplete => "both halves of a key pair travel together: fix the other half first",
            Reason::DifferentKeyMaterial => {
                "the target holds another key under this identity; hsm-sync never overwrites it: remove or rename one"
            }
            Reason::DifferentKeyType => {
                "the target holds a key of another type under this identity; hsm-sync never overwrites it: remove or rename one"
            }
            Reason::DuplicateOnSource | Reason::DuplicateOnTarget => {
                "give each object its own CKA_ID (or remove the extra copy)"
            }
            _ => return None,
        })
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

/// `code` or `code: detail`, as the text diff and console lines print a reason.
pub fn describe(reason: Option<Reason>, detail: Option<&str>) -> String {
    match (reason, detail) {
        (Some(r), Some(d)) => format!("{r}: {d}"),
        (Some(r), None) => r.to_string(),
        (None, Some(d)) => d.to_string(),
        (None, None) => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reason_serializes_as_its_bare_code() {
        for r in Reason::ALL {
            let json = serde_json::to_string(&r).unwrap();
            assert_eq!(json, format!("\"{}\"", r.code()));
            assert!(!json.contains(':') && !json.contains(' '), "{json}");
            assert_eq!(serde_json::from_str::<Reason>(&json).unwrap(), r);
        }
        assert_eq!(describe(Some(Reason::Drifted), Some("label")), "drifted: label");
    }
}
