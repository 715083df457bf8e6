//! Tokens of different makes (issue 14): SoftHSM 2.6 and Kryoptic 1.5 as source and
//! target, both ways and Kryoptic to Kryoptic, each pair in the wire format both sides
//! really make (probed), every copy proven, fingerprints equal across makes. And two
//! Kryoptic "vendor personalities": a target with RFC 3394 only, and one with no AES key
//! wrap at all.

use crate::world::*;

/// A token name as `hsm-fixture init` takes it: `NAME` (SoftHSM) or `NAME@MAKE`.
fn token(name: &str, make: &str) -> String {
    if make == "softhsm" {
        name.to_string()
    } else {
        format!("{name}@{make}")
    }
}

/// `primary` on `src`, `dr` on `dst`, one domain key (as `lineage import` gives tokens of
/// different makes).
fn mixed(src: &str, dst: &str) -> World {
    World::new()
        .tokens(&[&token("primary", src), &token("dr", dst)])
        .domain_key(&["primary", "dr"])
}

/// `primary` → `dr` selecting every key, each cluster on its make's module.
fn plan(src: &str, dst: &str) -> Plan {
    let mut p = Plan::two_clusters().select(Sel::label("*"));
    if src != "softhsm" {
        p = p.kryoptic("primary");
    }
    if dst != "softhsm" {
        p = p.kryoptic("dr");
    }
    p
}

/// Syncs AES-128, AES-256, a 32-byte generic secret and a CKK_SHA256_HMAC key from a
/// `src` token to a `dst` token: validate names each side's mechanism, every job is
/// created in RFC 5649 and verified, the copies' fingerprints equal the source's, the
/// HMAC keys compute equal MACs on both makes, and a second plan finds nothing to do.
fn secrets_travel(src: &str, dst: &str) {
    let w = mixed(src, dst)
        .key("primary", "a1", "aes-128", &["--bytes", "16"])
        .key("primary", "a2", "aes-256", &[])
        .key("primary", "b1", "generic-32", &["--generic", "--bytes", "32"])
        .key("primary", "c1", "hmac-sha256", &["--hmac", "sha256", "--bytes", "32"])
        .plan(&plan(src, dst));
    let v = w.run(&["validate", "plan.yaml", "--online"]);
    assert_eq!(v.code, 0, "{v:?}");
    let mech = |make: &str| {
        if make == "softhsm" {
            "CKM_AES_KEY_WRAP_PAD"
        } else {
            "CKM_AES_KEY_WRAP_KWP"
        }
    };
    let line = format!(
        "wire format: primary → dr: rfc5649 (primary {}, dr {})",
        mech(src),
        mech(dst)
    );
    assert!(
        v.stdout.contains(&line),
        "validate names each side's mechanism: {}",
        v.stdout
    );

    let a = w.run(&["apply", "plan.yaml", "--report", "-"]);
    assert_eq!(a.code, 0, "{a:?}");
    let r = a.report();
    assert_eq!(r.summary.create, 4, "{:?}", r.jobs);
    for j in &r.jobs {
        assert_eq!(j.status, Status::Ok, "{j:?}");
        assert_eq!(j.mechanism.map(|m| m.code()), Some("rfc5649"), "{j:?}");
    }
    let (s, d) = (inventory(&w, "primary"), inventory(&w, "dr"));
    assert_eq!(s.len(), 4);
    assert_eq!(
        s, d,
        "same labels, classes, key types (sha256-hmac kept) and fingerprints on both makes"
    );
    assert!(s.iter().all(|k| k.3.is_string()), "every key fingerprinted: {s:?}");
    assert!(s.iter().any(|k| k.2 == "sha256-hmac"));
    for id in ["b1", "c1"] {
        assert_eq!(
            w.hmac("primary", id),
            w.hmac("dr", id),
            "key {id} computes the same HMAC on both makes"
        );
    }
    let again = w.run(&["plan", "plan.yaml", "--detailed-exitcode"]);
    assert_eq!(again.code, 0, "in sync: {again:?}");
    assert!(again.stdout.contains("4 unchanged"), "{}", again.stdout);
}

#[test]
fn secrets_travel_softhsm_to_kryoptic() {
    secrets_travel("softhsm", "kryoptic");
}

#[test]
fn secrets_travel_kryoptic_to_softhsm() {
    secrets_travel("kryoptic", "softhsm");
}

#[test]
fn secrets_travel_kryoptic_to_kryoptic() {
    secrets_travel("kryoptic", "kryoptic");
}

/// Syncs an RSA-2048 and a P-256 pair from a `src` token to a `dst` token: every job ok,
/// each private copy proven by a signature the source's public key verifies (their PKCS#8
/// blobs differ between makes), fingerprints equal across makes (public parts), the copy
/// signs what the source's public key accepts, and a second plan finds nothing to do.
fn pairs_travel(src: &str, dst: &str) {
    let w = mixed(src, dst)
        .key_pair("primary", "e1", "ec", &["--ec", "p256"])
        .key_pair("primary", "f1", "rsa", &["--rsa", "2048"])
        .plan(&plan(src, dst));
    let a = w.run(&["apply", "plan.yaml", "--report", "-"]);
    assert_eq!(a.code, 0, "{a:?}");
    let r = a.report();
    assert_eq!(r.summary.create, 4, "{:?}", r.jobs);
    for j in &r.jobs {
        assert_eq!(j.status, Status::Ok, "{j:?}");
        if j.key.class == Some(KeyClass::PrivateKey) {
            assert!(
                j.note.as_deref().is_some_and(|n| n.contains("signature")),
                "a private copy is proven by a signature: {j:?}"
            );
        }
    }
    let (s, d) = (inventory(&w, "primary"), inventory(&w, "dr"));
    assert_eq!(s.len(), 4);
    assert_eq!(s, d, "equal fingerprints for both halves across makes");
    for id in ["e1", "f1"] {
        let sig = w.fixture(&["sign", "dr", "--id", id]);
        w.fixture(&["verify", "primary", "--id", id, "--sig", &sig]);
    }
    let again = w.run(&["plan", "plan.yaml", "--detailed-exitcode"]);
    assert_eq!(again.code, 0, "in sync: {again:?}");
    assert!(again.stdout.contains("4 unchanged"), "{}", again.stdout);
}

#[test]
fn pairs_travel_softhsm_to_kryoptic() {
    pairs_travel("softhsm", "kryoptic");
}

#[test]
fn pairs_travel_kryoptic_to_softhsm() {
    pairs_travel("kryoptic", "softhsm");
}

#[test]
fn the_hmac_key_type_is_kept_softhsm_to_softhsm() {
    let w = pair()
        .key("primary", "c1", "hmac-sha256", &["--hmac", "sha256", "--bytes", "32"])
        .plan(&plan("softhsm", "softhsm"));
    let a = w.run(&["apply", "plan.yaml"]);
    assert_eq!(a.code, 0, "{a:?}");
    let d = inventory(&w, "dr");
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].2, "sha256-hmac", "not blocked as unsupported, not turned generic");
    assert_eq!(inventory(&w, "primary"), d);
    assert_eq!(w.hmac("primary", "c1"), w.hmac("dr", "c1"));
}

/// A SHA-2 HMAC key a test makes on `primary` with `hsm-fixture keygen --hmac`.
struct HmacKey {
    id: &'static str,
    label: &'static str,
    /// `--hmac` (`sha224`, …) and `--bytes`.
    hmac: &'static str,
    bytes: usize,
    /// `CKA_KEY_TYPE` as `hsm-fixture key-type` prints the token's own number.
    ckk: &'static str,
    /// The report's and inventory's `key_type`.
    key_type: &'static str,
}

const SHA224: HmacKey = HmacKey {
    id: "c2",
    label: "hmac-sha224",
    hmac: "sha224",
    bytes: 28,
    ckk: "0x2e",
    key_type: "sha224-hmac",
};
const SHA384: HmacKey = HmacKey {
    id: "c3",
    label: "hmac-sha384",
    hmac: "sha384",
    bytes: 48,
    ckk: "0x2c",
    key_type: "sha384-hmac",
};
/// Not a multiple of 8: SoftHSM zero-pads it, so its copy is also proven by an HMAC, which
/// only HMAC-SHA-384 computes under this key type.
const SHA384_ODD: HmacKey = HmacKey {
    id: "c4",
    label: "hmac-sha384-odd",
    hmac: "sha384",
    bytes: 52,
    ckk: "0x2c",
    key_type: "sha384-hmac",
};
const SHA512: HmacKey = HmacKey {
    id: "c5",
    label: "hmac-sha512",
    hmac: "sha512",
    bytes: 64,
    ckk: "0x2d",
    key_type: "sha512-hmac",
};

/// `primary` on `src` holding `keys`, `dr` on `dst`, the plan selecting every key.
fn hmac_world(src: &str, dst: &str, keys: &[&HmacKey]) -> World {
    keys.iter()
        .fold(mixed(src, dst), |w, k| {
            w.key(
                "primary",
                k.id,
                k.label,
                &["--hmac", k.hmac, "--bytes", &k.bytes.to_string()],
            )
        })
        .plan(&plan(src, dst))
}

/// The job of the key labelled `label`.
fn job_of<'a>(r: &'a Report, label: &str) -> &'a JobRecord {
    r.jobs
        .iter()
        .find(|j| j.key.label == label)
        .unwrap_or_else(|| panic!("no job for {label}: {:?}", r.jobs))
}

/// A job's `key_type` as the report writes it.
fn key_type_of(j: &JobRecord) -> serde_json::Value {
    serde_json::to_value(j.key.key_type).unwrap_or_default()
}

/// The SHA-224/384/512 HMAC key types (cryptoki 0.12 gives all three the value of
/// CKK_SHA256_HMAC, so hsm-sync reads and writes key types raw) from a `src` token to a
/// `dst` token: `plan` creates each with its type, `apply` copies and proves each (an
/// odd-length one by an HMAC of its own mechanism too), the copy holds the source's CKK
/// value as the token itself reports it, fingerprints and HMACs are equal across the pair,
/// and a second plan finds nothing to do.
fn sha2_hmac_types_travel(src: &str, dst: &str, keys: &[&HmacKey]) {
    let w = hmac_world(src, dst, keys);
    let planned = w.run(&["plan", "plan.yaml", "--format", "json"]).report();
    assert_eq!(planned.jobs.len(), keys.len(), "{:?}", planned.jobs);
    for k in keys {
        let j = job_of(&planned, k.label);
        assert_eq!(j.action, Action::Create, "not blocked as unsupported: {j:?}");
        assert_eq!(key_type_of(j), k.key_type, "{j:?}");
    }

    let a = w.run(&["apply", "plan.yaml", "--report", "-"]);
    assert_eq!(a.code, 0, "{a:?}");
    let r = a.report();
    assert_eq!(r.summary.create, keys.len(), "{:?}", r.jobs);
    for k in keys {
        let j = job_of(&r, k.label);
        assert_eq!((j.action, j.status), (Action::Create, Status::Ok), "{j:?}");
        assert_eq!(key_type_of(j), k.key_type, "{j:?}");
        assert_eq!(j.mechanism.map(|m| m.code()), Some("rfc5649"), "{j:?}");
        if k.bytes % 8 != 0 && src == "softhsm" {
            assert!(
                j.note
                    .as_deref()
                    .is_some_and(|n| n.contains("HMAC results verified equal")),
                "a zero-padded copy is proven by an HMAC of its type's mechanism: {j:?}"
            );
        }
        for token in ["primary", "dr"] {
            assert_eq!(
                w.fixture(&["key-type", token, "--id", k.id]),
                k.ckk,
                "{}'s CKA_KEY_TYPE on {token}, as the token holds it",
                k.label
            );
        }
        assert_eq!(
            w.hmac("primary", k.id),
            w.hmac("dr", k.id),
            "{} computes the same HMAC on both tokens",
            k.label
        );
    }
    let (s, d) = (inventory(&w, "primary"), inventory(&w, "dr"));
    assert_eq!(s, d, "same labels, classes, key types and fingerprints on both tokens");
    assert!(s.iter().all(|k| k.3.is_string()), "every key fingerprinted: {s:?}");
    for k in keys {
        assert!(s.iter().any(|i| i.0 == k.label && i.2 == k.key_type), "{s:?}");
    }
    let again = w.run(&["plan", "plan.yaml", "--detailed-exitcode"]);
    assert_eq!(again.code, 0, "in sync: {again:?}");
    assert!(
        again.stdout.contains(&format!("{} unchanged", keys.len())),
        "{}",
        again.stdout
    );
}

#[test]
fn sha2_hmac_types_are_kept_softhsm_to_softhsm() {
    sha2_hmac_types_travel("softhsm", "softhsm", &[&SHA224, &SHA384, &SHA384_ODD, &SHA512]);
}

#[test]
fn sha2_hmac_types_travel_softhsm_to_kryoptic() {
    // Kryoptic takes a zero-padded SHA-224 or odd SHA-384 key by C_UnwrapKey (it refuses
    // them by C_CreateObject: PKCS11-NOTES.md).
    sha2_hmac_types_travel("softhsm", "kryoptic", &[&SHA224, &SHA384, &SHA384_ODD, &SHA512]);
}

#[test]
fn sha2_hmac_types_travel_kryoptic_to_softhsm() {
    sha2_hmac_types_travel("kryoptic", "softhsm", &[&SHA384, &SHA512]);
}

#[test]
fn sha2_hmac_types_travel_kryoptic_to_kryoptic() {
    sha2_hmac_types_travel("kryoptic", "kryoptic", &[&SHA224, &SHA384, &SHA512]);
}

/// A SHA-224 HMAC key is 28 bytes (Kryoptic makes no other length): Kryoptic's RFC 5649
/// carries it as it is and SoftHSM's re-wrap of a copy would be of the value zero-padded to
/// 32, so the two could never be compared. The odd-length rule blocks it, with its type
/// named, before anything is written; the other keys still travel.
#[test]
fn a_sha224_hmac_key_from_kryoptic_to_softhsm_is_blocked_as_odd_length() {
    let w = hmac_world("kryoptic", "softhsm", &[&SHA224, &SHA384]);
    let a = w.run(&["apply", "plan.yaml", "--report", "-"]);
    assert_eq!(a.code, 3, "a blocked key remains: {a:?}");
    let r = a.report();
    let j = job_of(&r, SHA224.label);
    assert_eq!(j.action, Action::Blocked, "{j:?}");
    assert_eq!(key_type_of(j), "sha224-hmac", "{j:?}");
    assert_eq!(
        j.reason.map(|r| r.to_string()).as_deref(),
        Some("odd-length-secret"),
        "{j:?}"
    );
    assert!(
        j.detail.as_deref().unwrap_or("").contains("zero-pads a 28-byte value"),
        "{j:?}"
    );
    assert_eq!(r.summary.failed, 0, "blocked before any copy was tried");
    let d = inventory(&w, "dr");
    assert_eq!(d.len(), 1, "only the SHA-384 key was copied: {d:?}");
    assert_eq!(d[0].2, "sha384-hmac");
    let again = w.run(&["plan", "plan.yaml", "--detailed-exitcode"]);
    assert_eq!(again.code, 3, "nothing to apply, a blocked key remains: {again:?}");
}

/// A target that lists no HMAC-SHA-384 (a Kryoptic slot denying it) could neither use a
/// `CKK_SHA384_HMAC` copy nor prove it: the key is blocked before anything is written,
/// naming the mechanism; a SHA-512 key beside it still travels.
#[test]
fn an_hmac_key_type_the_target_has_no_mechanism_for_is_blocked() {
    let w = hmac_world("softhsm", "kryoptic-nosha384", &[&SHA384, &SHA512]);
    let a = w.run(&["apply", "plan.yaml", "--report", "-"]);
    assert_eq!(a.code, 3, "a blocked key remains: {a:?}");
    let r = a.report();
    let j = job_of(&r, SHA384.label);
    assert_eq!(j.action, Action::Blocked, "{j:?}");
    assert_eq!(j.reason.map(|r| r.code()), Some("no-common-mechanism"), "{j:?}");
    assert!(
        j.detail
            .as_deref()
            .unwrap_or("")
            .contains("offers no HMAC-SHA-384 mechanism"),
        "{j:?}"
    );
    assert_eq!(r.summary.failed, 0, "blocked before any copy was tried: {:?}", r.jobs);
    let ok = job_of(&r, SHA512.label);
    assert_eq!((ok.action, ok.status), (Action::Create, Status::Ok), "{ok:?}");
    let d = inventory(&w, "dr");
    assert_eq!(d.len(), 1, "only the SHA-512 key was copied: {d:?}");
    assert_eq!(d[0].2, "sha512-hmac");
}

/// A label longer than the one-call read's buffer makes hsm-sync read the key through
/// cryptoki, which says CKK_SHA256_HMAC for a SHA-384 key: the raw confirmation then
/// gives its real type.
#[test]
fn a_sha2_hmac_key_type_is_right_where_cryptoki_reads_the_key() {
    let long = format!("hmac-sha384-{}", "x".repeat(300));
    let w = pair()
        .key("primary", "c3", &long, &["--hmac", "sha384", "--bytes", "48"])
        .plan(&plan("softhsm", "softhsm"));
    let s = inventory(&w, "primary");
    assert_eq!(s.len(), 1, "{s:?}");
    assert_eq!((s[0].0.as_str(), s[0].2.as_str()), (long.as_str(), "sha384-hmac"));
    let a = w.run(&["apply", "plan.yaml"]);
    assert_eq!(a.code, 0, "{a:?}");
    assert_eq!(w.fixture(&["key-type", "dr", "--id", "c3"]), "0x2c");
    assert_eq!(inventory(&w, "dr"), s);
}

/// One wire format per (source, target) pair (CONTRACT §1): `primary` on `src` → `dr`
/// (Kryoptic, RFC 5649 only) and `dr2` (Kryoptic, RFC 3394 only). No format is common to
/// all three, which once stopped the run; now each target gets what it reads, both sides
/// of each pair fingerprint in its format, a 28-byte HMAC key that RFC 3394 cannot carry
/// is blocked for `dr2` only (and never wrapped in it: Kryoptic's strict RFC 3394 would
/// refuse it), and a second plan finds the copies unchanged.
fn each_pair_travels_in_its_own_format(src: &str) {
    let w = World::new()
        .tokens(&[&token("primary", src), "dr@kryoptic-kwp", "dr2@kryoptic-kw"])
        .domain_key(&["primary", "dr", "dr2"])
        .key("primary", "a1", "aes-256", &[])
        .key(
            "primary",
            SHA224.id,
            SHA224.label,
            &["--hmac", "sha224", "--bytes", "28"],
        )
        .key_pair("primary", "e1", "ec", &["--ec", "p256"]);
    let mut plan = Plan::new(
        vec![
            ClusterSpec::new("primary"),
            ClusterSpec::new("dr").cloned_from("primary"),
            ClusterSpec::new("dr2").cloned_from("primary"),
        ],
        "primary",
        &["dr", "dr2"],
    )
    .select(Sel::label("*"))
    .kryoptic("dr")
    .kryoptic("dr2");
    if src != "softhsm" {
        plan = plan.kryoptic("primary");
    }
    let w = w.plan(&plan);
    let v = w.run(&["validate", "plan.yaml", "--online"]);
    assert_eq!(v.code, 0, "{v:?}");
    let kwp = if src == "softhsm" {
        "CKM_AES_KEY_WRAP_PAD"
    } else {
        "CKM_AES_KEY_WRAP_KWP"
    };
    for line in [
        format!("wire format: primary → dr: rfc5649 (primary {kwp}, dr CKM_AES_KEY_WRAP_KWP)"),
        "wire format: primary → dr2: rfc3394 (primary CKM_AES_KEY_WRAP, dr2 CKM_AES_KEY_WRAP)".to_string(),
    ] {
        assert!(v.stdout.contains(&line), "{line}\n{}", v.stdout);
    }

    // Through a saved plan: its digests cover both pairs' fingerprints.
    let saved = w.run(&["plan", "plan.yaml", "--out", "saved.json"]);
    assert_eq!(saved.code, 0, "{saved:?}");
    let a = w.run(&["apply", "saved.json", "--report", "-"]);
    assert_eq!(a.code, 3, "the EC pair cannot reach dr2: {a:?}");
    let r = a.report();
    let job = |target: &str, label: &str, class: KeyClass| {
        r.jobs
            .iter()
            .find(|j| j.target == target && j.key.label == label && j.key.class == Some(class))
            .unwrap_or_else(|| panic!("no job for {label} on {target}: {:?}", r.jobs))
    };
    for (target, format) in [("dr", "rfc5649"), ("dr2", "rfc3394")] {
        let aes = job(target, "aes-256", KeyClass::SecretKey);
        assert_eq!((aes.action, aes.status), (Action::Create, Status::Ok), "{aes:?}");
        assert_eq!(aes.mechanism.map(|m| m.code()), Some(format), "{aes:?}");
        let listed = inventory(&w, target);
        let copy = listed.iter().find(|k| k.0 == "aes-256").expect("the AES copy");
        assert_eq!(
            copy.3.as_str(),
            aes.fingerprint.as_deref(),
            "{target}: the copy was proven in its pair's format, which {target} lists in"
        );
    }
    assert_ne!(
        job("dr", "aes-256", KeyClass::SecretKey).fingerprint,
        job("dr2", "aes-256", KeyClass::SecretKey).fingerprint,
        "two formats, two digests of one key"
    );
    let hmac = job("dr", SHA224.label, KeyClass::SecretKey);
    assert_eq!((hmac.action, hmac.status), (Action::Create, Status::Ok), "{hmac:?}");
    let hmac = job("dr2", SHA224.label, KeyClass::SecretKey);
    assert_eq!(hmac.reason.map(|r| r.code()), Some("no-common-mechanism"), "{hmac:?}");
    for class in [KeyClass::PrivateKey, KeyClass::PublicKey] {
        let ec = job("dr", "ec", class);
        assert_eq!((ec.action, ec.status), (Action::Create, Status::Ok), "{ec:?}");
    }
    let private = job("dr2", "ec", KeyClass::PrivateKey);
    assert_eq!(
        private.reason.map(|r| r.code()),
        Some("no-common-mechanism"),
        "{private:?}"
    );
    assert_eq!(
        job("dr2", "ec", KeyClass::PublicKey).reason.map(|r| r.code()),
        Some("pair-incomplete")
    );

    let again = w.run(&["plan", "plan.yaml", "--format", "json"]).report();
    let s = &again.summary;
    assert_eq!(
        (s.create, s.unchanged, s.blocked, s.conflict),
        (0, 5, 3, 0),
        "{again:#?}"
    );
}

#[test]
fn each_pair_of_a_softhsm_source_travels_in_its_own_format() {
    each_pair_travels_in_its_own_format("softhsm");
}

#[test]
fn each_pair_of_a_kryoptic_source_travels_in_its_own_format() {
    each_pair_travels_in_its_own_format("kryoptic");
}

/// The target side of per-pair formats: `dr` (Kryoptic, both formats) hears from
/// `primary` (SoftHSM) in RFC 5649 and from `src2` (Kryoptic, RFC 3394 only) in RFC 3394,
/// so its copies are fingerprinted in both, and a second plan compares each copy with its
/// own source in that pair's format: all unchanged, no false conflict.
#[test]
fn a_target_of_two_sources_compares_each_pair_in_its_format() {
    let w = World::new()
        .tokens(&["primary", "dr@kryoptic", "src2@kryoptic-kw"])
        .domain_key(&["primary", "dr", "src2"])
        .key("primary", "a1", "a-key", &[])
        .key("src2", "b1", "b-key", &[]);
    let plan = format!(
        "version: 1
clusters:
{}{}{}sync:
  - name: from-primary
    source: primary
    targets: [dr]
    keys:
      - label: \"a-*\"
  - name: from-src2
    source: src2
    targets: [dr]
    keys:
      - label: \"b-*\"
",
        cluster_yaml("primary", None),
        cluster_yaml("dr", Some("primary")).replace("{module}", "{kryoptic}"),
        cluster_yaml("src2", Some("primary")).replace("{module}", "{kryoptic}")
    );
    let w = w.plan(plan.as_str());
    let v = w.run(&["validate", "plan.yaml", "--online"]);
    assert_eq!(v.code, 0, "{v:?}");
    assert!(v.stdout.contains("wire format: primary → dr: rfc5649"), "{}", v.stdout);
    assert!(v.stdout.contains("wire format: src2 → dr: rfc3394"), "{}", v.stdout);
    let a = w.run(&["apply", "plan.yaml", "--report", "-"]);
    assert_eq!(a.code, 0, "{a:?}");
    let r = a.report();
    let mechanisms: Vec<(String, Option<&str>)> = r
        .jobs
        .iter()
        .map(|j| (j.source.clone(), j.mechanism.map(|m| m.code())))
        .collect();
    assert_eq!(
        mechanisms,
        [
            ("primary".to_string(), Some("rfc5649")),
            ("src2".to_string(), Some("rfc3394"))
        ],
        "{:?}",
        r.jobs
    );
    let again = w.run(&["plan", "plan.yaml", "--format", "json"]).report();
    let s = &again.summary;
    assert_eq!((s.create, s.unchanged, s.conflict), (0, 2, 0), "{again:#?}");
}

#[test]
fn a_target_with_rfc3394_only_gets_what_rfc3394_carries() {
    let w = mixed("softhsm", "kryoptic-kw")
        .key("primary", "a1", "aes-256", &[])
        .key("primary", "b1", "odd-20", &["--generic", "--bytes", "20"])
        .key_pair("primary", "e1", "ec", &["--ec", "p256"])
        .plan(&plan("softhsm", "kryoptic-kw"));
    let v = w.run(&["validate", "plan.yaml", "--online"]);
    assert_eq!(v.code, 0, "{v:?}");
    assert!(
        v.stdout
            .contains("wire format: primary → dr: rfc3394 (primary CKM_AES_KEY_WRAP, dr CKM_AES_KEY_WRAP)"),
        "{}",
        v.stdout
    );
    let a = w.run(&["apply", "plan.yaml", "--report", "-"]);
    assert_eq!(a.code, 3, "blocked keys remain: {a:?}");
    let r = a.report();
    let job = |label: &str, class: KeyClass| {
        r.jobs
            .iter()
            .find(|j| j.key.label == label && j.key.class == Some(class))
            .unwrap_or_else(|| panic!("no job for {label}: {:?}", r.jobs))
    };
    let aes = job("aes-256", KeyClass::SecretKey);
    assert_eq!((aes.action, aes.status), (Action::Create, Status::Ok));
    assert_eq!(aes.mechanism.map(|m| m.code()), Some("rfc3394"));
    let odd = job("odd-20", KeyClass::SecretKey);
    assert_eq!(odd.action, Action::Blocked);
    assert!(
        odd.reasons.iter().any(|r| r.to_string() == "no-common-mechanism"),
        "{odd:?}"
    );
    let private = job("ec", KeyClass::PrivateKey);
    assert_eq!(private.action, Action::Blocked);
    assert_eq!(
        private.reason.map(|r| r.to_string()).as_deref(),
        Some("no-common-mechanism")
    );
    let public = job("ec", KeyClass::PublicKey);
    assert_eq!(public.action, Action::Blocked);
    assert_eq!(public.reason.map(|r| r.to_string()).as_deref(), Some("pair-incomplete"));
    let d = inventory(&w, "dr");
    assert_eq!(d.len(), 1, "only the AES key reached the target: {d:?}");
    // The copy's fingerprint (dr has RFC 3394 only) is the one apply proved in the pair's
    // format; `inventory primary` alone digests its own preferred format, RFC 5649, and
    // says so, unless `lineage.wrap` pins the pair's.
    let listed = w.run(&["inventory", "plan.yaml", "primary"]);
    assert!(
        listed.stdout.contains("fingerprints in rfc5649 (CKM_AES_KEY_WRAP_PAD)"),
        "{}",
        listed.stdout
    );
    let listed = w.run(&["inventory", "plan.yaml", "dr", "--format", "json"]).json();
    assert_eq!(listed["wire_format"], "rfc3394");
    // Pinned, both sides digest RFC 3394 alike.
    let pinned = plan("softhsm", "kryoptic-kw").edit("primary", |c| c.wrap = Some("rfc3394".into()));
    let w = w.plan(&pinned);
    let src = inventory(&w, "primary");
    assert_eq!(
        src.iter().find(|k| k.0 == "aes-256").map(|k| &k.3),
        Some(&d[0].3),
        "{src:?}"
    );
    assert_eq!(d[0].3.as_str(), aes.fingerprint.as_deref());
    let again = w.run(&["plan", "plan.yaml", "--format", "json"]);
    let unchanged = again
        .report()
        .jobs
        .iter()
        .filter(|j| j.action == Action::Unchanged)
        .count();
    assert_eq!(
        unchanged, 1,
        "the AES copy is unchanged on the next plan: {}",
        again.stdout
    );
}

#[test]
fn a_target_with_no_key_wrap_fails_before_anything_is_written() {
    let w = mixed("softhsm", "kryoptic-nowrap")
        .key("primary", "a1", "aes-256", &[])
        .plan(&plan("softhsm", "kryoptic-nowrap"));
    for cmd in [
        &["validate", "plan.yaml", "--online"][..],
        &["plan", "plan.yaml"],
        &["apply", "plan.yaml"],
    ] {
        let out = w.run(cmd);
        assert_eq!(out.code, 1, "{cmd:?}: {out:?}");
        assert!(
            out.stderr.contains("clusters `primary` and `dr` share no wire format"),
            "{cmd:?} names both clusters: {}",
            out.stderr
        );
        assert!(out.stderr.contains("nothing was written"), "{}", out.stderr);
    }
    assert_eq!(w.count("dr"), 0, "no key reached the target");
}

/// `probe` on each make: what each key-wrap mechanism really makes, found by wrapping a
/// known value, and the formats the token offers; nothing written to the token.
#[test]
fn probe_tells_what_each_wrap_mechanism_really_makes() {
    let w = World::new()
        .tokens(&["primary", "dr@kryoptic", "kw@kryoptic-kw"])
        .domain_key(&["primary", "dr", "kw"])
        .plan(
            &plan("softhsm", "kryoptic")
                .cluster(ClusterSpec::new("kw").cloned_from("primary"))
                .kryoptic("kw"),
        );
    let before: Vec<String> = ["primary", "dr", "kw"]
        .iter()
        .map(|t| w.fixture(&["objects", t]))
        .collect();
    let soft = w.run(&["probe", "plan.yaml", "primary"]);
    assert_eq!(soft.code, 0, "{soft:?}");
    for line in [
        "profile: SoftHSM",
        "key wrap: CKM_AES_KEY_WRAP_PAD (0x210a) makes RFC 5649 of the value zero-padded to 8",
        "key wrap: CKM_AES_KEY_WRAP (0x2109) makes RFC 3394 of the value zero-padded to 8",
        "wire format rfc5649: CKM_AES_KEY_WRAP_PAD",
    ] {
        assert!(
            soft.stdout.contains(line),
            "SoftHSM probe lacks `{line}`:\n{}",
            soft.stdout
        );
    }
    let kry = w.run(&["probe", "plan.yaml", "dr", "--format", "json"]);
    assert_eq!(kry.code, 0, "{kry:?}");
    let j = kry.json();
    assert_eq!(j["manufacturer"], "Kryoptic Project");
    let made = wrap_made(&j);
    assert!(made.contains(&(0x210B, "rfc5649".into())), "{made:?}");
    assert!(made.contains(&(0x2109, "rfc3394".into())), "strict RFC 3394: {made:?}");
    assert!(!made.iter().any(|m| m.0 == 0x210A), "Kryoptic has no 0x210A: {made:?}");
    assert_eq!(j["unique_id"], true, "Kryoptic objects carry CKA_UNIQUE_ID");
    assert!(soft.stdout.contains("CKA_UNIQUE_ID: no"), "{}", soft.stdout);
    assert!(soft.stdout.contains("template quirks: none known"), "{}", soft.stdout);
    let kw = w.run(&["probe", "plan.yaml", "kw"]);
    assert!(
        kw.stdout.contains("wire format rfc3394: CKM_AES_KEY_WRAP"),
        "{}",
        kw.stdout
    );
    assert!(!kw.stdout.contains("wire format rfc5649"), "{}", kw.stdout);
    let after: Vec<String> = ["primary", "dr", "kw"]
        .iter()
        .map(|t| w.fixture(&["objects", t]))
        .collect();
    assert_eq!(before, after, "probe writes no token object");
}

#[test]
fn a_plan_may_choose_the_profile_and_an_unknown_one_is_named() {
    let w = pair().plan(
        &Plan::two_clusters()
            .select(Sel::label("*"))
            .edit("dr", |c| c.profile = Some("thales luna".into())),
    );
    let p = w.run(&["probe", "plan.yaml", "dr"]);
    assert_eq!(p.code, 0, "{p:?}");
    assert!(p.stdout.contains("profile: Thales Luna"), "{}", p.stdout);
    assert!(
        p.stdout.contains("CKA_VALUE_LEN sent when unwrapping"),
        "the row's quirks: {}",
        p.stdout
    );
    let w = w.plan(
        &Plan::two_clusters()
            .select(Sel::label("*"))
            .edit("dr", |c| c.profile = Some("lunar".into())),
    );
    let p = w.run(&["validate", "plan.yaml", "--online"]);
    assert_eq!(p.code, 1, "{p:?}");
    assert!(p.stderr.contains("no profile named `lunar`"), "{}", p.stderr);
    assert!(
        p.stderr.contains("SoftHSM, Kryoptic"),
        "the help lists the profiles: {}",
        p.stderr
    );

    // The README's token guide (issue 16 item 18) has a row for every family a profile
    // knows, tested here or read in vendor documentation.
    let listed = p.stderr.split("profiles: auto, ").nth(1).expect("the profile list");
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README");
    let guide = readme
        .split("## Tokens")
        .nth(1)
        .expect("a Tokens section")
        .split("\n## ")
        .next()
        .unwrap_or("");
    assert!(
        guide.contains("### Tested here") && guide.contains("### Real HSMs"),
        "both tables"
    );
    let names: Vec<&str> = listed.lines().next().unwrap_or("").split(", ").map(str::trim).collect();
    assert!(names.len() >= 5, "{names:?}");
    for name in names {
        if name == "generic PKCS#11" {
            continue;
        }
        let family = name.trim_start_matches("Thales ").trim_start_matches("AWS ");
        assert!(
            guide.lines().any(|l| l.starts_with('|') && l.contains(family)),
            "the README's token tables have no row for profile `{name}`"
        );
    }
}

#[test]
fn a_key_type_the_target_has_no_mechanism_for_is_blocked_not_failed() {
    let w = mixed("softhsm", "kryoptic")
        .key("primary", "d1", "des3", &["--des3"])
        .key("primary", "a1", "aes", &[])
        .plan(&plan("softhsm", "kryoptic"));
    let a = w.run(&["apply", "plan.yaml", "--report", "-"]);
    assert_eq!(a.code, 3, "{a:?}");
    let r = a.report();
    let des3 = r.jobs.iter().find(|j| j.key.label == "des3").expect("a des3 job");
    assert_eq!(des3.action, Action::Blocked, "{des3:?}");
    assert_eq!(
        des3.reason.map(|r| r.to_string()).as_deref(),
        Some("no-common-mechanism")
    );
    assert!(
        des3.detail
            .as_deref()
            .unwrap_or("")
            .contains("offers no DES3 mechanism"),
        "{des3:?}"
    );
    assert_eq!(r.summary.failed, 0, "blocked before any copy was tried");
    assert_eq!(inventory(&w, "dr").len(), 1, "only the AES key was copied");
}

/// A `user:password` token (CloudHSM's PIN form; its profile says so): the plan's `user`
/// becomes part of the login, and the PIN source holds the password alone. Here a SoftHSM
/// token whose PIN is `app:…` stands in, with `profile: AWS CloudHSM`.
#[test]
fn a_user_password_profile_logs_in_with_the_plans_user() {
    let w = pair();
    let password = std::fs::read_to_string(w.path().join("dr.pin")).expect("dr.pin");
    let password = password.trim();
    w.fixture(&["set-pin", "dr", "--new", &format!("app:{password}")]);
    // CloudHSM holds no documented data objects: its plans keep state off the token.
    let cloudhsm = |p: Plan| {
        p.edit("dr", |c| c.profile = Some("AWS CloudHSM".into()))
            .state_file("state")
    };
    let w = w.plan(&cloudhsm(Plan::two_clusters().select(Sel::label("*"))));
    let v = w.run(&["validate", "plan.yaml", "--online"]);
    assert_eq!(v.code, 0, "`app:` + the PIN file logs in: {v:?}");
    assert!(!v.stdout.contains(password) && !v.stderr.contains(password));
    let w = w.plan(
        &cloudhsm(Plan::two_clusters().select(Sel::label("*")))
            .edit("dr", |c| *c = c.clone().login("crypto-user", "nobody"))
            .edit("primary", |c| *c = c.clone().login("crypto-user", "nobody")),
    );
    let v = w.run(&["validate", "plan.yaml", "--online"]);
    assert_eq!(v.code, 1, "another user is another login: {v:?}");
    assert!(v.stderr.contains("wrong PIN"), "{}", v.stderr);
    let w = w.plan(&Plan::two_clusters().select(Sel::label("*")));
    assert_eq!(
        w.run(&["validate", "plan.yaml", "--online"]).code,
        1,
        "without the profile the password alone is wrong"
    );
}
