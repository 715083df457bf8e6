//! Tokens disagree on what an unwrap template may hold and on which wrap mechanism they
//! offer. What cannot be probed lives in this one table, chosen by the token's
//! manufacturer and model (`C_GetTokenInfo`), so the rest of the code builds one template,
//! names no mechanism, and lets the profile decide. Each row names its source (habit 16).

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
    /// Whether the token's PIN is `user:password` (CloudHSM's crypto-users log in so):
    /// the plan's `user` is then part of the login.
    pub pin_with_user: bool,
    /// Whether the token holds no private token data objects, so the `token` state
    /// backend cannot keep records or journals there (NSS softokn refuses them; CloudHSM
    /// documents no `CKO_DATA`).
    pub no_data_objects: bool,
    /// Whether object handles last one session only (CloudHSM SDK5: "find again every
    /// run"), so a handle from an earlier run, an `inventory` listing or a runbook may
    /// name another key: `handle:` selectors and `sync-key`'s handle are refused there.
    pub handles_per_session: bool,
    /// Vendor key-wrap mechanisms the probe also tries (ids cryptoki cannot name and a
    /// token of another make may use for something else: only this family's are tried).
    pub vendor_wraps: &'static [(u64, &'static str)],
    /// Where the behaviour was observed or documented.
    pub source: &'static str,
}

impl Profile {
    /// What this row says a token's templates and logins need, in words (for `probe`).
    pub fn quirks(&self) -> Vec<&'static str> {
        let mut q = Vec::new();
        if self.value_len_on_unwrap {
            q.push("CKA_VALUE_LEN sent when unwrapping secret keys");
        }
        if self.private_only {
            q.push("every copy is CKA_PRIVATE");
        }
        if self.pin_with_user {
            q.push("the PIN is user:password (credentials.user is part of the login)");
        }
        if self.no_data_objects {
            q.push("holds no data objects: keep state off the token (state.backend file or postgres)");
        }
        if self.handles_per_session {
            q.push("object handles last one session: select keys by id or label, never by handle");
        }
        q
    }
}

/// The known token families, most specific first; the last entry is the default.
pub(super) const PROFILES: &[Profile] = &[
    Profile {
        name: "SoftHSM",
        manufacturer: "softhsm",
        model: "",
        value_len_on_unwrap: false,
        private_only: false,
        pin_with_user: false,
        no_data_objects: false,
        handles_per_session: false,
        vendor_wraps: &[],
        source: "measured on SoftHSM 2.6.1 (shared/PKCS11-NOTES.md); tested in CI",
    },
    Profile {
        name: "Kryoptic",
        manufacturer: "kryoptic",
        model: "",
        value_len_on_unwrap: false,
        private_only: false,
        pin_with_user: false,
        no_data_objects: false,
        handles_per_session: false,
        vendor_wraps: &[],
        source: "measured on Kryoptic 1.5.4 (shared/PKCS11-NOTES.md); tested in CI",
    },
    Profile {
        name: "NSS softokn",
        manufacturer: "mozilla",
        model: "",
        value_len_on_unwrap: false,
        private_only: false,
        pin_with_user: false,
        no_data_objects: true,
        handles_per_session: false,
        // Its 0x210A is PKCS#7 + RFC 3394 and its vendor aliases (0xCE534351/2) the same
        // mechanisms: the probe finds 0x210B, RFC 5649, without any vendor id.
        vendor_wraps: &[],
        source: "measured on NSS softokn 3.87 (shared/PKCS11-NOTES.md); tested in CI",
    },
    Profile {
        name: "Thales Luna",
        manufacturer: "safenet",
        model: "",
        value_len_on_unwrap: true,
        private_only: false,
        pin_with_user: false,
        no_data_objects: false,
        handles_per_session: false,
        // Luna's own KWP and KW ids (xipki vendor.conf; VENDORS.md); 0x210B is reported to work too.
        vendor_wraps: &[(0x8000_0171, "CKM_AES_KWP (Luna)"), (0x8000_0170, "CKM_AES_KW (Luna)")],
        source: "Luna PKCS#11 documentation: C_UnwrapKey of AES keys needs CKA_VALUE_LEN; not tested here",
    },
    Profile {
        name: "AWS CloudHSM",
        manufacturer: "marvell",
        model: "",
        value_len_on_unwrap: false,
        private_only: true,
        // CloudHSM's PKCS#11 PIN is `<CU user name>:<password>` (AWS CloudHSM PKCS#11
        // library documentation, "PKCS #11 library PIN"); not tested here.
        pin_with_user: true,
        no_data_objects: true,
        // SDK5 handles are session-specific (AWS migration guide; VENDORS.md "handles").
        handles_per_session: true,
        // SDK5 offers RFC 5649 only under its own id; its 0x8000210A is PKCS#5 padding,
        // never RFC 5649 (cloudhsm_pkcs11_vendor_defs.h; VENDORS.md).
        vendor_wraps: &[(0x8000_216F, "CKM_CLOUDHSM_AES_KEY_WRAP_ZERO_PAD")],
        source: "AWS CloudHSM PKCS#11 library documentation: keys are private (CKA_PRIVATE true only); not tested here",
    },
    Profile {
        name: "generic PKCS#11",
        manufacturer: "",
        model: "",
        value_len_on_unwrap: false,
        private_only: false,
        pin_with_user: false,
        no_data_objects: false,
        handles_per_session: false,
        vendor_wraps: &[],
        source: "PKCS#11 v2.40 §5.18: C_UnwrapKey takes CKA_VALUE_LEN from the wrapped data",
    },
];

/// The profile a plan names with `profile:` (case-insensitive), if there is one.
pub(super) fn by_name(name: &str) -> Option<&'static Profile> {
    PROFILES.iter().find(|p| p.name.eq_ignore_ascii_case(name))
}

/// Every profile's name, for the message of an unknown one.
pub(super) fn names() -> Vec<&'static str> {
    PROFILES.iter().map(|p| p.name).collect()
}

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
        assert!(for_token("Marvell Semiconductor, Inc.", "LS2").handles_per_session);
        assert!(!for_token("SoftHSM project", "SoftHSM v2").handles_per_session);
        assert_eq!(for_token("Acme", "Box").name, "generic PKCS#11");
        assert_eq!(for_token("Kryoptic Project", "v1").name, "Kryoptic");
        assert_eq!(for_token("Mozilla Foundation", "NSS 3").name, "NSS softokn");
        assert_eq!(by_name("thales luna").map(|p| p.name), Some("Thales Luna"));
        assert!(by_name("nope").is_none());
    }
}
