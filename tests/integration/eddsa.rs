//! Ed25519 pairs (CONTRACT §3: "EdDSA pairs where both tokens can wrap them"). The EdDSA
//! module (`tools/kryoptic-eddsa`: Kryoptic 1.5.4 on an OpenSSL 3.5 the tests build from the
//! `openssl-src` crate, since Debian 12's 3.0 has no EdDSA for Kryoptic) wraps and unwraps
//! them; SoftHSM 2.6 lists EdDSA but can do neither. So a pair travels Kryoptic → Kryoptic,
//! proven by a signature across the pair, and is blocked naming SoftHSM either way.

use crate::world::*;

/// `primary` on `src` and `dr` on `dst` (`softhsm` or `kryoptic`, Kryoptic on the EdDSA
/// module), one domain key, an Ed25519 pair `e1` on `primary`, and a plan selecting it.
fn ed_world(src: &str, dst: &str) -> World {
    let token = |name: &str, make: &str| match make {
        "softhsm" => name.to_string(),
        _ => format!("{name}@kryoptic"),
    };
    let mut plan = Plan::two_clusters().select(Sel::label("*"));
    for (name, make) in [("primary", src), ("dr", dst)] {
        if make != "softhsm" {
            plan = plan.kryoptic_eddsa(name);
        }
    }
    World::new()
        .eddsa_kryoptic()
        .tokens(&[&token("primary", src), &token("dr", dst)])
        .domain_key(&["primary", "dr"])
        .key_pair("primary", "e1", "ed", &["--ec", "ed25519"])
        .plan(&plan)
}

#[test]
fn an_ed25519_pair_travels_kryoptic_to_kryoptic_proven_by_a_signature() {
    let w = ed_world("kryoptic", "kryoptic");
    let keys: Vec<(String, String, String)> = inventory(&w, "primary")
        .into_iter()
        .map(|(label, class, key_type, _)| (label, class, key_type))
        .collect();
    let ed = |class: &str| ("ed".to_string(), class.to_string(), "ec-edwards".to_string());
    assert_eq!(keys, [ed("private-key"), ed("public-key")], "both halves, typed");
    let probe = w.run(&["probe", "plan.yaml", "dr"]);
    assert!(
        probe
            .stdout
            .contains("CKM_AES_KEY_WRAP_KWP (0x210b) makes RFC 5649; carries EdDSA keys"),
        "{}",
        probe.stdout
    );

    let planned = w.run(&["plan", "plan.yaml", "--format", "json"]).report();
    assert_eq!(planned.summary.create, 2, "{:?}", planned.jobs);
    let a = w.run(&["apply", "plan.yaml", "--report", "-"]);
    assert_eq!(a.code, 0, "{a:?}");
    let r = a.report();
    for j in &r.jobs {
        assert_eq!((j.action, j.status), (Action::Create, Status::Ok), "{j:?}");
        assert_eq!(j.mechanism.map(|m| m.code()), Some("rfc5649"), "{j:?}");
    }
    let private = r
        .jobs
        .iter()
        .find(|j| j.key.class == Some(KeyClass::PrivateKey))
        .expect("the private half's job");
    assert!(
        private.note.as_deref().unwrap_or("").contains("proven by a signature"),
        "{private:?}"
    );

    // The copy is the key: it signs on dr, and primary's public half verifies that.
    let sig = w.fixture(&["sign", "dr", "--id", "e1"]);
    assert_eq!(sig.len(), 128, "an Ed25519 signature is 64 bytes: {sig}");
    w.fixture(&["verify", "primary", "--id", "e1", "--sig", &sig]);
    let (src, dst) = (inventory(&w, "primary"), inventory(&w, "dr"));
    assert_eq!(dst.len(), 2, "{dst:?}");
    for (s, d) in src.iter().zip(&dst) {
        assert_eq!((&s.0, &s.1, &s.2), (&d.0, &d.1, &d.2));
        assert!(s.3.is_string(), "{s:?}");
        assert_eq!(s.3, d.3, "fingerprints equal across the pair: {s:?} {d:?}");
    }
    let again = w.run(&["plan", "plan.yaml", "--detailed-exitcode"]);
    assert_eq!(again.code, 0, "nothing left to do: {again:?}");
}

/// SoftHSM 2.6 cannot wrap an Ed25519 key, nor unwrap one: the pair is blocked with the
/// cluster named, both halves, whichever side SoftHSM is, and nothing is written.
#[test]
fn an_ed25519_pair_is_blocked_naming_softhsm_either_way() {
    for (src, dst, named) in [("softhsm", "kryoptic", "primary"), ("kryoptic", "softhsm", "dr")] {
        let w = ed_world(src, dst);
        let a = w.run(&["apply", "plan.yaml", "--report", "-"]);
        assert_eq!(a.code, 3, "{src} → {dst}: blocked keys remain: {a:?}");
        let r = a.report();
        assert_eq!(r.jobs.len(), 2, "{:?}", r.jobs);
        for j in &r.jobs {
            assert_eq!(j.action, Action::Blocked, "{src} → {dst}: {j:?}");
            assert_eq!(j.reason.map(|r| r.code()), Some("no-common-mechanism"), "{j:?}");
            assert!(
                j.detail
                    .as_deref()
                    .unwrap_or("")
                    .contains(&format!("`{named}` cannot wrap and unwrap EdDSA keys")),
                "{src} → {dst}: {j:?}"
            );
        }
        assert_eq!(r.summary.failed, 0, "blocked before any copy was tried");
        assert!(inventory(&w, "dr").is_empty(), "{src} → {dst}: nothing written to dr");
    }
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
