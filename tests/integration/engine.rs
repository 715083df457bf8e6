//! The sync engine on three SoftHSM tokens (one source, two targets): every key type,
//! every action of CONTRACT.md §3, roles, and the exit codes.

use crate::world::{remade, Action, ClusterSpec, JobRecord, KeyClass, Plan, Report, Sel, Status, World};
use hsm_sync::domain::reason::Reason;
use KeyClass::{PrivateKey, PublicKey, SecretKey};

/// `primary` → `dr1`, `dr2`, all three clones of one domain key; role and user as given.
fn three(role: &str) -> World {
    let w = World::new()
        .tokens(&["primary", "dr1", "dr2"])
        .domain_key(&["primary", "dr1", "dr2"]);
    w.write("role", role);
    w
}

fn plan3(w: World, role: &str, keys: &[Sel]) -> World {
    w.plan(&plan3_plan(role, keys))
}

/// `primary` → `dr1`, `dr2` (`dr2` cloned from `dr1`), sync `all`, user `ops` as `role`.
fn plan3_plan(role: &str, keys: &[Sel]) -> Plan {
    let cluster = |name: &str| ClusterSpec::new(name).login(role, "ops");
    let plan = Plan::new(
        vec![
            cluster("primary"),
            cluster("dr1").cloned_from("primary"),
            cluster("dr2").cloned_from("dr1"),
        ],
        "primary",
        &["dr1", "dr2"],
    )
    .sync_name("all");
    keys.iter().cloned().fold(plan, Plan::select)
}

/// The job for `id` (of `class`, or of no class when the key was not found) on `target`.
fn job<'a>(r: &'a Report, target: &str, class: Option<KeyClass>, id: &str) -> &'a JobRecord {
    r.jobs
        .iter()
        .find(|j| j.target == target && j.key.class == class && j.key.id == id)
        .unwrap_or_else(|| panic!("no job {target} {class:?} {id} in {r:#?}"))
}

#[test]
fn every_key_type_reaches_both_targets_and_pairs_stay_pairs() {
    let w = three("crypto-user")
        .key("primary", "a128", "aes-128", &["--bytes", "16"])
        .key("primary", "a192", "aes-192", &["--bytes", "24"])
        .key("primary", "a256", "aes-256", &["--bytes", "32"])
        .key("primary", "6820", "hmac-20", &["--generic", "--bytes", "20"])
        .key("primary", "6848", "hmac-48", &["--generic", "--bytes", "48"]);
    // Kryoptic has no DES3; and a 20-byte secret wrapped by its (non-padding) RFC 5649
    // cannot be compared with SoftHSM's zero-padded re-wrap, so it is blocked there.
    let kryoptic_source = remade("primary");
    let w = if kryoptic_source {
        w
    } else {
        w.key("primary", "de53", "des3", &["--des3"])
    };
    for (id, label, kind) in [
        ("2048", "rsa-2048", &["--rsa", "2048"][..]),
        ("3072", "rsa-3072", &["--rsa", "3072"]),
        ("e256", "ec-256", &["--ec", "p256"]),
        ("e384", "ec-384", &["--ec", "p384"]),
    ] {
        let mut args = vec!["keygen-pair", "primary", "--id", id, "--label", label];
        args.extend_from_slice(kind);
        w.fixture(&args);
    }
    let w = plan3(w, "crypto-user", &[Sel::label("*")]);
    let out = w.run(&["apply", "plan.yaml", "--report", "r.json", "--jobs", "2"]);
    let r = w.report("r.json");
    // 6 secret keys + 4 pairs × 2 halves, on 2 targets (on a Kryoptic source: no DES3,
    // and the 20-byte secret blocked on both targets).
    let created = if kryoptic_source { 24 } else { 28 };
    assert_eq!(out.code, if kryoptic_source { 3 } else { 0 }, "{out:?}");
    assert_eq!(r.summary.create, created, "{r:#?}");
    assert!(
        r.jobs
            .iter()
            .all(|j| j.status == Status::Ok || (kryoptic_source && j.key.id == "6820")),
        "{r:#?}"
    );
    for t in ["dr1", "dr2"] {
        for id in ["2048", "3072", "e256", "e384"] {
            // The copy's private key signs what the source's public key verifies, and back.
            let sig = w.fixture(&["sign", t, "--id", id]);
            w.fixture(&["verify", "primary", "--id", id, "--sig", &sig]);
            let sig = w.fixture(&["sign", "primary", "--id", id]);
            w.fixture(&["verify", t, "--id", id, "--sig", &sig]);
            assert_eq!(job(&r, t, Some(PrivateKey), id).action, Action::Create);
            assert_eq!(job(&r, t, Some(PublicKey), id).action, Action::Create);
        }
        assert_eq!(w.hmac("primary", "6848"), w.hmac(t, "6848"));
        if !kryoptic_source {
            assert_eq!(w.hmac("primary", "6820"), w.hmac(t, "6820"));
        }
    }
    let again = w.run(&["plan", "plan.yaml", "--detailed-exitcode", "--format", "json"]);
    assert_eq!(again.code, if kryoptic_source { 3 } else { 0 }, "{again:?}");
    assert_eq!(again.report().summary.unchanged, created);
}

#[test]
fn every_action_in_one_run() {
    let w = three("crypto-user")
        .key("primary", "01", "fresh", &[])
        .key("primary", "02", "renamed-at-source", &[])
        .key("primary", "03", "same", &[])
        .key("primary", "04", "conflicting", &[])
        .key("primary", "05", "local-only", &["--no-extractable"])
        .key("primary", "06", "not-mine", &["--public"]);
    w.fixture(&[
        "keygen-pair",
        "primary",
        "--id",
        "07",
        "--label",
        "pair",
        "--ec",
        "p256",
    ]);
    let keys = [
        Sel::id("02"),
        Sel::id("03"),
        Sel::id("04"),
        Sel::id("05"),
        Sel::id("06"),
        Sel::id("0e"),
        Sel::label("retired").absent(),
    ];
    let w = plan3(w, "crypto-user", &keys);
    // Seed the targets: 02 and 03 synced, then drifted / left alone; 04 differs; a retired key.
    w.write(
        "seed.yaml",
        &plan3_plan("crypto-user", &[Sel::id("02"), Sel::id("03")]).yaml(),
    );
    assert_eq!(w.run(&["apply", "seed.yaml"]).code, 0);
    w.fixture(&["set-label", "dr1", "--id", "02", "--label", "old-name"]);
    w.fixture(&["set-flags", "dr2", "--id", "02", "--set", "encrypt=false"]);
    w.fixture(&["keygen", "dr1", "--id", "04", "--label", "conflicting"]);
    w.fixture(&["keygen", "dr2", "--id", "0d", "--label", "retired"]);
    // Now add 01 (create) and the pair to the plan.
    let added = [Sel::id("01"), Sel::id("07")];
    let plan = plan3_plan("crypto-user", &[&added[..], &keys[..]].concat());
    w.write("plan.yaml", &plan.yaml());

    let p = w.run(&["plan", "plan.yaml", "--format", "json"]).report();
    let action = |t: &str, class: Option<KeyClass>, id: &str| job(&p, t, class, id).action;
    let reason = |t: &str, class: Option<KeyClass>, id: &str| {
        job(&p, t, class, id)
            .reason
            .map(|r| r.code().to_string())
            .unwrap_or_default()
    };
    let detail = |t: &str, class: Option<KeyClass>, id: &str| job(&p, t, class, id).detail.clone().unwrap_or_default();
    assert_eq!(action("dr1", Some(SecretKey), "01"), Action::Create);
    assert_eq!(action("dr1", Some(PrivateKey), "07"), Action::Create);
    assert_eq!(
        action("dr2", Some(PublicKey), "07"),
        Action::Create,
        "a crypto-user owns the public half of its pair"
    );
    assert_eq!(action("dr1", Some(SecretKey), "02"), Action::Update);
    // The reason is a bare code a pipeline can select on; what drifted is its detail.
    assert_eq!(reason("dr1", Some(SecretKey), "02"), "drifted", "{p:#?}");
    assert!(detail("dr1", Some(SecretKey), "02").contains("label"), "{p:#?}");
    assert!(detail("dr2", Some(SecretKey), "02").contains("encrypt"), "{p:#?}");
    assert_eq!(action("dr1", Some(SecretKey), "03"), Action::Unchanged);
    assert_eq!(action("dr1", Some(SecretKey), "04"), Action::Conflict);
    assert_eq!(reason("dr1", Some(SecretKey), "04"), "different-key-material");
    assert_eq!(action("dr2", Some(SecretKey), "04"), Action::Create);
    assert_eq!(reason("dr1", Some(SecretKey), "05"), "not-extractable");
    assert_eq!(reason("dr1", Some(SecretKey), "06"), "not-owned", "{p:#?}");
    assert!(detail("dr1", Some(SecretKey), "06").contains("CKA_PRIVATE"), "{p:#?}");
    assert_eq!(reason("dr1", None, "0e"), "not-found-on-source");
    assert_eq!(action("dr2", Some(SecretKey), "0d"), Action::Delete);

    // Deletions need --allow-destroy: without it nothing changes and the exit is 1.
    let refused = w.run(&["apply", "plan.yaml"]);
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(
        refused.stderr.contains("1 deletion(s) pending") && refused.stderr.contains("--allow-destroy"),
        "{}",
        refused.stderr
    );
    assert_eq!(
        w.run(&["plan", "plan.yaml", "--format", "json"]).report().summary,
        p.summary
    );

    let out = w.run(&["apply", "plan.yaml", "--allow-destroy", "--report", "r.json"]);
    assert_eq!(out.code, 3, "conflicts and blocked keys remain: {out:?}");
    let r = w.report("r.json");
    assert_eq!(r.summary.failed, 0, "{r:#?}");
    let after = w.run(&["plan", "plan.yaml", "--format", "json"]).report();
    let s = &after.summary;
    assert_eq!((s.create, s.update, s.delete), (0, 0, 0), "{after:#?}");
    assert_eq!(s.conflict, 1);
    assert_eq!(w.fixture(&["count", "dr2", "--id", "0d"]), "0");
}

#[test]
fn a_crypto_officer_syncs_public_objects_a_crypto_user_may_not() {
    let user = plan3(
        three("crypto-user").key("primary", "06", "shared", &["--public"]),
        "crypto-user",
        &[Sel::id("06")],
    );
    let out = user.run(&["apply", "plan.yaml", "--report", "r.json"]);
    assert_eq!(out.code, 3);
    assert!(user.read("r.json").contains("not-owned"));
    assert_eq!(user.count("dr1"), 0);

    let officer = plan3(
        three("crypto-officer").key("primary", "06", "shared", &["--public"]),
        "crypto-officer",
        &[Sel::id("06")],
    );
    let out = officer.run(&["apply", "plan.yaml"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(officer.count("dr1"), 1);
    assert_eq!(officer.count("dr2"), 1);
}

#[test]
fn drift_on_an_unmodifiable_copy_is_a_conflict() {
    let w = plan3(
        three("crypto-user").key("primary", "01", "k", &[]),
        "crypto-user",
        &[Sel::id("01")],
    );
    assert_eq!(w.run(&["apply", "plan.yaml"]).code, 0);
    w.fixture(&["freeze", "dr1", "--id", "01", "--label", "renamed"]);
    let p = w.run(&["plan", "plan.yaml", "--format", "json"]).report();
    let j = job(&p, "dr1", Some(SecretKey), "01");
    assert_eq!(j.action, Action::Conflict);
    assert_eq!(j.reason, Some(Reason::NotModifiable), "{j:?}");
    assert!(j.detail.as_deref().unwrap_or("").contains("label"), "{j:?}");
}
