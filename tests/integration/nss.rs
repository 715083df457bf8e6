//! NSS softokn 3.87 (Debian's libnss3), the suite's third PKCS#11 implementation (issue
//! 14 item 7): the token whose 0x210A is PKCS#7 padding + RFC 3394, not RFC 5649, and
//! whose 0x210B size query answers the input length. Reached only through `module_args`
//! (C_Initialize's pReserved). It holds no token or private data objects, so on the
//! `token` state backend it cannot be a target (the in-flight journal) and records no
//! lifecycle events as a source; with state in a directory (issue 15) it is both.
//!
//! softokn opens one database per process: each world has one NSS token, `dr` or
//! `primary`, selected by NSS's own label "NSS Certificate DB".

use crate::world::*;

/// `primary` (SoftHSM) and `dr` (NSS), one domain key.
fn softhsm_and_nss() -> World {
    World::new()
        .tokens(&["primary", "dr@nss"])
        .domain_key(&["primary", "dr"])
}

/// An error as one line: miette wraps long messages at word boundaries under `  │ `.
fn unwrapped(stderr: &str) -> String {
    stderr.replace("\n  │ ", " ")
}

#[test]
fn probe_finds_nss_0x210a_is_not_rfc5649_and_uses_0x210b() {
    let w = softhsm_and_nss().plan(&Plan::two_clusters().select(Sel::label("*")).nss("dr"));
    let before = w.fixture(&["objects", "dr"]);
    let p = w.run(&["probe", "plan.yaml", "dr"]);
    assert_eq!(p.code, 0, "{p:?}");
    for line in [
        "token `NSS Certificate DB`",
        "Mozilla Foundation",
        "profile: NSS softokn",
        // The size query of 0x210B answers the input length: the raw wrap re-sizes.
        "key wrap: CKM_AES_KEY_WRAP_KWP (0x210b) makes RFC 5649",
        "key wrap: CKM_AES_KEY_WRAP_PAD (0x210a) makes PKCS#7 padding then RFC 3394 (not portable)",
        "wire format rfc5649: CKM_AES_KEY_WRAP_KWP",
    ] {
        assert!(p.stdout.contains(line), "NSS probe lacks `{line}`:\n{}", p.stdout);
    }
    assert!(
        !p.stdout.contains("wire format rfc5649: CKM_AES_KEY_WRAP_PAD"),
        "NSS's 0x210A never carries RFC 5649: {}",
        p.stdout
    );
    let j = w.run(&["probe", "plan.yaml", "dr", "--format", "json"]).json();
    let made = wrap_made(&j);
    assert!(made.contains(&(0x210B, "rfc5649".into())), "{made:?}");
    assert!(made.iter().any(|m| m.0 == 0x210A && m.1 != "rfc5649"), "{made:?}");
    assert_eq!(before, w.fixture(&["objects", "dr"]), "probe writes no token object");
}

#[test]
fn lineage_is_proven_softhsm_to_nss_in_rfc5649() {
    let w = softhsm_and_nss().plan(
        &Plan::two_clusters()
            .select(Sel::label("*"))
            .nss("dr")
            .state_file("state"),
    );
    let v = w.run(&["validate", "plan.yaml", "--online"]);
    assert_eq!(v.code, 0, "{v:?}");
    assert!(v.stdout.contains("state: file ("), "{}", v.stdout);
    assert!(v.stdout.contains("lineage proven: primary → dr"), "{}", v.stdout);
    assert!(
        v.stdout
            .contains("wire format: primary → dr: rfc5649 (primary CKM_AES_KEY_WRAP_PAD, dr CKM_AES_KEY_WRAP_KWP)"),
        "{}",
        v.stdout
    );
}

#[test]
fn inventory_on_nss_fingerprints_keys_as_softhsm_does() {
    let value = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    let w = softhsm_and_nss()
        .key("dr", "a1", "aes-256", &[])
        .key("dr", "b1", "generic-32", &["--generic", "--bytes", "32"])
        .key("dr", "c1", "hmac-sha256", &["--hmac", "sha256", "--bytes", "32"])
        .plan(&Plan::two_clusters().select(Sel::label("*")).nss("dr"));
    for t in ["primary", "dr"] {
        w.fixture(&["import", t, "--id", "d1", "--label", "known", "--value", value]);
    }
    let dr = inventory(&w, "dr");
    let labels: Vec<&str> = dr.iter().map(|k| k.0.as_str()).collect();
    assert_eq!(labels, ["aes-256", "generic-32", "hmac-sha256", "known"], "{dr:?}");
    assert!(
        dr.iter().all(|k| k.3.is_string()),
        "every NSS key fingerprinted: {dr:?}"
    );
    assert!(dr.iter().any(|k| k.2 == "sha256-hmac"), "{dr:?}");
    let primary = inventory(&w, "primary");
    assert_eq!(
        primary.iter().find(|k| k.0 == "known"),
        dr.iter().find(|k| k.0 == "known"),
        "one value under one domain key has one fingerprint on both makes"
    );
}

/// CONTRACT.md §6: a token that cannot hold data objects makes `validate --online` say so
/// and name the other backends, before anything is written.
#[test]
fn validate_online_says_nss_holds_no_data_objects_and_names_the_backends() {
    let w = softhsm_and_nss().plan(&Plan::two_clusters().select(Sel::label("*")).nss("dr"));
    let before = w.fixture(&["objects", "dr"]);
    let v = w.run(&["validate", "plan.yaml", "--online"]);
    assert_eq!(v.code, 1, "{v:?}");
    let stderr = unwrapped(&v.stderr);
    for part in [
        "state::no_data_objects",
        "`dr` hold(s) no data objects (NSS softokn)",
        "backend: file",
        "backend: postgres",
    ] {
        assert!(stderr.contains(part), "the error lacks `{part}`: {stderr}");
    }
    assert_eq!(before, w.fixture(&["objects", "dr"]), "nothing written");
}

/// With state in a directory, NSS is a target like any other: keys travel SoftHSM → NSS
/// in RFC 5649, each copy verified, fingerprints equal, the second plan unchanged, and no
/// object but the keys on NSS (the journal and the records are in the directory).
#[test]
fn with_state_in_a_directory_keys_sync_to_nss() {
    let w = softhsm_and_nss()
        .key("primary", "a1", "aes-256", &[])
        .key("primary", "b1", "generic-32", &["--generic", "--bytes", "32"])
        .plan(
            &Plan::two_clusters()
                .select(Sel::label("*"))
                .nss("dr")
                .state_file("state"),
        );
    let a = w.run(&["apply", "plan.yaml", "--report", "-"]);
    assert_eq!(a.code, 0, "{a:?}");
    let r = a.report();
    assert_eq!(r.summary.create, 2, "{:?}", r.jobs);
    for j in &r.jobs {
        assert_eq!(j.status, Status::Ok, "{j:?}");
        assert_eq!(j.mechanism.map(|m| m.code()), Some("rfc5649"), "{j:?}");
    }
    assert_eq!(inventory(&w, "primary"), inventory(&w, "dr"));
    assert_eq!(w.hmac("primary", "b1"), w.hmac("dr", "b1"), "the copy MACs alike");
    assert_eq!(w.fixture(&["count", "dr", "--data"]), "0", "no data object on NSS");
    assert!(
        w.path().join("state/records").is_dir(),
        "the records are in the directory"
    );
    let again = w.run(&["plan", "plan.yaml", "--detailed-exitcode"]);
    assert_eq!(again.code, 0, "in sync: {again:?}");
    assert!(again.stdout.contains("2 unchanged"), "{}", again.stdout);
}

/// The in-flight journal goes on every target before any copy: NSS refuses it, so a
/// sync to NSS stops there, naming the token, the CKR and why, with nothing copied.
/// (With the journal left out, measured by hand, the copy is made and verified, its
/// fingerprint equals the source's and a second plan is unchanged: the journal is all
/// that stands in the way.)
#[test]
fn a_sync_to_nss_stops_at_the_journal_with_nothing_copied() {
    let w = softhsm_and_nss()
        .key("primary", "a2", "aes-256", &[])
        .plan(&Plan::two_clusters().select(Sel::label("*")).nss("dr"));
    let p = w.run(&["plan", "plan.yaml", "--format", "json"]);
    assert_eq!(p.code, 0, "{p:?}");
    assert_eq!(p.report().summary.create, 1, "the plan itself works: {}", p.stdout);
    let a = w.run(&["apply", "plan.yaml"]);
    assert_eq!(a.code, 1, "{a:?}");
    let stderr = unwrapped(&a.stderr);
    for part in [
        "cluster `dr` (token `NSS Certificate DB`)",
        "writing the in-flight journal",
        "C_CreateObject returned CKR_ATTRIBUTE_VALUE_INVALID",
        "the token holds no private token data objects (NSS softokn refuses them)",
        "nothing was copied",
        "backend: file",
    ] {
        assert!(stderr.contains(part), "the error lacks `{part}`: {stderr}");
    }
    assert_eq!(w.count("dr"), 0, "no key reached NSS");
}

/// NSS as the source: keys travel to SoftHSM in RFC 5649 (0x210B into 0x210A), each
/// copy verified, fingerprints equal, the second plan unchanged; the lifecycle records
/// NSS cannot hold are warnings (exit 3) that say why.
#[test]
fn keys_travel_nss_to_softhsm_and_the_records_say_why_they_are_missing() {
    let w = World::new()
        .tokens(&["primary@nss", "dr"])
        .domain_key(&["primary", "dr"])
        .key("primary", "a1", "aes-256", &[])
        .key("primary", "a2", "aes-128", &["--bytes", "16"])
        .key("primary", "b1", "generic-32", &["--generic", "--bytes", "32"])
        .plan(&Plan::two_clusters().select(Sel::label("*")).nss("primary"));
    let a = w.run(&["apply", "plan.yaml", "--report", "-"]);
    assert_eq!(a.code, 3, "copied, but no lifecycle record: {a:?}");
    let r = a.report();
    assert_eq!(r.summary.create, 3, "{:?}", r.jobs);
    for j in &r.jobs {
        assert_eq!(j.status, Status::Ok, "{j:?}");
        assert_eq!(j.mechanism.map(|m| m.code()), Some("rfc5649"), "{j:?}");
    }
    let warnings: Vec<&str> = a
        .stderr
        .lines()
        .filter(|l| l.contains("could not record the lifecycle events"))
        .collect();
    assert_eq!(warnings.len(), 1, "one per source (one page per run): {}", a.stderr);
    for w in warnings {
        for part in [
            "of 3 key(s) of `primary` in the token state backend",
            "(token `NSS Certificate DB`)",
            "CKR_ATTRIBUTE_VALUE_INVALID",
            "the token holds no private token data objects",
        ] {
            assert!(w.contains(part), "the warning lacks `{part}`: {w}");
        }
    }
    assert_eq!(inventory(&w, "primary"), inventory(&w, "dr"));
    assert_eq!(
        w.hmac("primary", "b1"),
        w.hmac("dr", "b1"),
        "the generic secret MACs alike"
    );
    let again = w.run(&["plan", "plan.yaml", "--detailed-exitcode"]);
    assert_eq!(again.code, 0, "in sync: {again:?}");
    assert!(again.stdout.contains("3 unchanged"), "{}", again.stdout);
}

#[test]
fn nss_without_module_args_fails_with_the_hint() {
    let w = softhsm_and_nss().plan(
        &Plan::two_clusters()
            .select(Sel::label("*"))
            .nss("dr")
            .edit("dr", |c| c.module_args = None),
    );
    let v = w.run(&["validate", "plan.yaml", "--online"]);
    assert_eq!(v.code, 1, "{v:?}");
    let stderr = unwrapped(&v.stderr);
    for part in [
        "cluster `dr`",
        "C_Initialize returned CKR_ARGUMENTS_BAD; this module may need `module_args`",
        "this module may need `module_args`",
        "configdir='sql:DIR'",
    ] {
        assert!(stderr.contains(part), "the error lacks `{part}`: {stderr}");
    }
}

/// A process initialises a module once: two clusters on one module with different
/// `module_args` (two NSS databases) are refused, never the second silently opened as
/// the first's database (both tokens are labelled "NSS Certificate DB").
#[test]
fn two_nss_databases_in_one_plan_are_refused_by_name() {
    let w = World::new().tokens(&["primary@nss", "dr@nss"]);
    let w = w.plan(&Plan::two_clusters().select(Sel::label("*")).nss("primary").nss("dr"));
    let v = w.run(&["validate", "plan.yaml", "--online"]);
    assert_eq!(v.code, 1, "{v:?}");
    let stderr = unwrapped(&v.stderr);
    for part in [
        "cluster `dr`",
        "cluster `primary` already initialised this module with module_args",
        "every cluster on one module must give the same `module_args`",
    ] {
        assert!(stderr.contains(part), "the error lacks `{part}`: {stderr}");
    }
}
