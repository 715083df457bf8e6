//! Ed25519 on Kryoptic: the EdDSA module (`tools/kryoptic-eddsa`, Kryoptic 1.5.4 on an
//! OpenSSL 3.5 the tests build from the `openssl-src` crate, since Debian 12's 3.0 has no
//! EdDSA for Kryoptic) makes, lists and signs with Ed25519 key pairs. The infrastructure for
//! Ed25519 pairs travelling Kryoptic → Kryoptic; hsm-sync still blocks them, so nothing here
//! plans or applies one.

use crate::world::*;

/// `primary` and `dr`, Kryoptic tokens on the EdDSA module, one domain key, and a plan
/// naming that module for both.
fn eddsa_pair() -> World {
    World::new()
        .eddsa_kryoptic()
        .tokens(&["primary@kryoptic", "dr@kryoptic"])
        .domain_key(&["primary", "dr"])
}

/// `primary` → `dr`, every key, both on the EdDSA module.
fn eddsa_plan() -> Plan {
    Plan::two_clusters()
        .select(Sel::label("*"))
        .kryoptic_eddsa("primary")
        .kryoptic_eddsa("dr")
}

#[test]
fn an_ed25519_pair_on_eddsa_kryoptic_is_listed_and_signs() {
    let w = eddsa_pair()
        .key_pair("primary", "e1", "ed", &["--ec", "ed25519"])
        .plan(&eddsa_plan());
    let keys: Vec<(String, String, String)> = inventory(&w, "primary")
        .into_iter()
        .map(|(label, class, key_type, _)| (label, class, key_type))
        .collect();
    let ed = |class: &str| ("ed".to_string(), class.to_string(), "ec-edwards".to_string());
    assert_eq!(keys, [ed("private-key"), ed("public-key")], "both halves, typed");
    // Pure Ed25519 (CKM_EDDSA, no parameters): a 64-byte signature.
    let sig = w.fixture(&["sign", "primary", "--id", "e1"]);
    assert_eq!(sig.len(), 128, "an Ed25519 signature is 64 bytes: {sig}");
    w.fixture(&["verify", "primary", "--id", "e1", "--sig", &sig]);
    assert!(inventory(&w, "dr").is_empty(), "nothing travels here");
}

#[test]
fn the_fixture_signs_with_ed25519_on_softhsm_too() {
    let w = World::new()
        .tokens(&["soft"])
        .key_pair("soft", "e1", "ed", &["--ec", "ed25519"]);
    let sig = w.fixture(&["sign", "soft", "--id", "e1"]);
    assert_eq!(sig.len(), 128, "an Ed25519 signature is 64 bytes: {sig}");
    w.fixture(&["verify", "soft", "--id", "e1", "--sig", &sig]);
}
