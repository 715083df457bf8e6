//! Tokens disagree on what an unwrap template may hold and on which wrap mechanism they
//! offer. What cannot be probed lives in this one table, chosen by the token's
//! manufacturer and model (`C_GetTokenInfo`), so the rest of the code builds one template,
//! names no mechanism, and lets the profile decide. Each row names its source (habit 16).

use super::wrap::WrapMechanism;

/// How one family of tokens wants its unwrap templates, and which wrap mechanism it uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Profile {
    /// Name shown in messages.
    pub name: &'static str,
    /// Substring of `manufacturerID` (case-insensitive) that selects this profile.
    manufacturer: &'static str,
    /// Substring of `model` (case-insensitive) that also selects it ("" = any).
    model: &'static str,
    /// Whether the token needs `CKA_VALUE_LEN` in the template to unwrap a secret key.
    /// SoftHSM refuses it there (CKR_ATTRIBUTE_READ_ONLY); Luna requires it for AES.
    pub value_len_on_unwrap: bool,
    /// Whether every unwrapped key must be `CKA_PRIVATE` true.
    pub private_only: bool,
    /// The mechanism that wraps and unwraps keys under the domain key (copies,
    /// fingerprints, the lineage proof).
    pub wrap: WrapMechanism,
    /// Where the behaviour was observed or documented.
    pub source: &'static str,
}

/// The known token families, most specific first; the last entry is the default.
pub(super) const PROFILES: &[Profile] = &[
    Profile {
        name: "SoftHSM",
        manufacturer: "softhsm",
        model: "",
        value_len_on_unwrap: false,
        private_only: false,
        // 0x210A measured on SoftHSM 2.6.1: RFC 5649 of the value zero-padded to 8; it has
        // no 0x210B (PKCS11-NOTES.md, "Wrap mechanisms").
        wrap: WrapMechanism::RFC5649_PAD,
        source: "measured on SoftHSM 2.6.1 (shared/PKCS11-NOTES.md); tested in CI",
    },
    Profile {
        name: "Thales Luna",
        manufacturer: "safenet",
        model: "",
        value_len_on_unwrap: true,
        private_only: false,
        // Not measured on a Luna: 0x210A is what hsm-sync used for every token before
        // profiles carried the mechanism.
        wrap: WrapMechanism::RFC5649_PAD,
        source: "Luna PKCS#11 documentation: C_UnwrapKey of AES keys needs CKA_VALUE_LEN; not tested here",
    },
    Profile {
        name: "AWS CloudHSM",
        manufacturer: "marvell",
        model: "",
        value_len_on_unwrap: false,
        private_only: true,
        // Not measured on CloudHSM: 0x210A is what hsm-sync used for every token before
        // profiles carried the mechanism.
        wrap: WrapMechanism::RFC5649_PAD,
        source: "AWS CloudHSM PKCS#11 library documentation: keys are private (CKA_PRIVATE true only); not tested here",
    },
    Profile {
        name: "generic PKCS#11",
        manufacturer: "",
        model: "",
        value_len_on_unwrap: false,
        private_only: false,
        // PKCS#11 v2.40 defines CKM_AES_KEY_WRAP_PAD (0x210A); 3.1 deprecates it, and
        // Kryoptic offers only 0x210B (PKCS11-NOTES.md): the portability issue.
        wrap: WrapMechanism::RFC5649_PAD,
        source: "PKCS#11 v2.40 §5.18: C_UnwrapKey takes CKA_VALUE_LEN from the wrapped data",
    },
];

/// The profile of a token, by its manufacturer and model.
pub(super) fn for_token(manufacturer: &str, model: &str) -> &'static Profile {
    let (m, md) = (manufacturer.to_ascii_lowercase(), model.to_ascii_lowercase());
    PROFILES
        .iter()
        .find(|p| m.contains(p.manufacturer) && md.contains(p.model))
        .unwrap_or(&PROFILES[PROFILES.len() - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_get_their_profile() {
        assert_eq!(for_token("SoftHSM project", "SoftHSM v2").name, "SoftHSM");
        assert!(for_token("Safenet, Inc.", "Luna K7").value_len_on_unwrap);
        assert!(for_token("Marvell Semiconductor, Inc.", "LS2").private_only);
        assert_eq!(for_token("Acme", "Box").name, "generic PKCS#11");
    }

    #[test]
    fn every_profile_wraps_with_one_mechanism_both_paths_name_alike() {
        for p in PROFILES {
            // What every token was wrapped with before profiles carried it: fingerprints,
            // journals and lineage pins of earlier runs stay valid.
            assert_eq!(p.wrap, WrapMechanism::RFC5649_PAD, "{}", p.name);
            // The raw C_WrapKey and cryptoki's calls use the same mechanism.
            let via_cryptoki = p.wrap.cryptoki().expect("cryptoki names it").mechanism_type();
            assert_eq!(cryptoki_sys::CK_MECHANISM_TYPE::from(via_cryptoki), p.wrap.raw);
        }
        assert_eq!(WrapMechanism::RFC5649_PAD.raw, 0x210A);
        assert_eq!(WrapMechanism::RFC5649_PAD.name, "rfc5649");
    }
}
