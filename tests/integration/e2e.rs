//! The pipeline end to end on SoftHSM: validate, plan, apply, report, rerun, demo.

use crate::world::{
    assert_schema, pair, read_report, remade, two_cluster_plan, Action, Pin, Plan, Sel, Status, Token, World,
};
use serde_json::Value;

#[test]
fn plan_apply_and_rerun_converge() {
    let w = pair()
        .key("primary", "a1", "pay", &["--count", "6"])
        .key("primary", "b1", "mac", &["--generic", "--count", "3"])
        .key("primary", "c1", "other", &[])
        .plan(
            &Plan::two_clusters()
                .select(Sel::label("pay-*"))
                .select(Sel::label("mac-*")),
        );

    let v = w.run(&["validate", "plan.yaml", "--online"]);
    assert_eq!(v.code, 0, "{v:?}");
    assert!(v.stdout.contains("lineage proven: primary → dr"), "{}", v.stdout);

    let p = w.run(&["plan", "plan.yaml", "--detailed-exitcode"]);
    assert_eq!(p.code, 2, "changes pending: {p:?}");
    assert!(p.stdout.contains("+ create"), "{}", p.stdout);
    assert!(p.stdout.contains("9 to create"), "{}", p.stdout);

    let planned = w.run(&["plan", "plan.yaml", "--format", "json"]);
    let json = planned.report();
    assert_eq!(json.command, "plan");
    assert_eq!(json.summary.create, 9);
    assert!(json.jobs.iter().all(|j| j.status == Status::Pending));
    assert_schema("report", &planned.json(), "report");

    let a = w.run(&["apply", "plan.yaml", "--report", "report.json", "--jobs", "2"]);
    assert_eq!(a.code, 0, "{a:?}");
    assert_schema("report", &w.json("report.json"), "report");
    let report = w.report("report.json");
    assert_eq!(report.command, "apply");
    assert_eq!(report.summary.create, 9);
    assert_eq!(report.summary.failed, 0);
    for j in &report.jobs {
        assert_eq!(j.status, Status::Ok, "{j:?}");
        assert_eq!(
            j.fingerprint.as_deref().map(str::len),
            Some(16),
            "64-bit fingerprint, not a 3-byte KCV: {j:?}"
        );
    }
    // The unselected key stayed home; the copies are the same keys.
    assert_eq!(w.count("dr"), 9);
    assert_eq!(w.hmac("primary", "b10001"), w.hmac("dr", "b10001"));

    let again = w.run(&["plan", "plan.yaml", "--detailed-exitcode", "--format", "json"]);
    assert_eq!(again.code, 0, "no changes after apply: {again:?}");
    assert_eq!(again.report().summary.unchanged, 9);
    let rerun = w.run(&["apply", "plan.yaml"]);
    assert_eq!(rerun.code, 0);
    assert_eq!(w.count("dr"), 9, "a rerun creates nothing");
}

#[test]
fn copies_keep_the_source_attributes() {
    let w = pair()
        .key("primary", "01", "k", &["--count", "2"])
        .plan(&Plan::two_clusters().select(Sel::label("k-*")));
    assert_eq!(w.run(&["apply", "plan.yaml"]).code, 0);
    let src = w.run(&["inventory", "plan.yaml", "primary", "--format", "json"]).json();
    let dst = w.run(&["inventory", "plan.yaml", "dr", "--format", "json"]).json();
    assert_eq!(src["lineage_fingerprint"], dst["lineage_fingerprint"]);
    let strip = |v: &Value| -> Vec<Value> {
        v["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| {
                let mut k = k.clone();
                k.as_object_mut().unwrap().remove("handle");
                k
            })
            .collect()
    };
    // id, label, type, every flag (sensitive, extractable, private, usage) and fingerprint.
    assert_eq!(strip(&src), strip(&dst));
}

#[test]
fn a_target_with_another_domain_key_is_refused_before_any_write() {
    let w = World::new()
        .tokens(&["primary", "dr"])
        .domain_key(&["primary"])
        .domain_key(&["dr"])
        .key("primary", "01", "k", &[])
        .plan(&Plan::two_clusters().select(Sel::id("01")));
    for cmd in [
        &["validate", "plan.yaml", "--online"][..],
        &["plan", "plan.yaml"],
        &["apply", "plan.yaml"],
    ] {
        let out = w.run(cmd);
        assert_eq!(out.code, 1, "{cmd:?}: {out:?}");
        assert!(out.stderr.contains("not a clone of `primary`"), "{}", out.stderr);
        // The CKR code and "nothing was written", never cryptoki's stock prose.
        assert!(out.stderr.contains("returned CKR_"), "{}", out.stderr);
        assert!(out.stderr.contains("nothing was written"), "{}", out.stderr);
        assert!(!out.stderr.contains("horrible"), "{}", out.stderr);
    }
    assert_eq!(w.count("dr"), 0);
}

#[test]
fn a_pinned_lineage_fingerprint_must_match() {
    let w = pair().key("primary", "01", "k", &[]);
    let plan = Plan::two_clusters()
        .select(Sel::id("01"))
        .edit("dr", |c| c.lineage_fingerprint = Some("0123456789abcdef".into()));
    let w = w.plan(&plan);
    let out = w.run(&["validate", "plan.yaml", "--online"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("the plan pins 0123456789abcdef"), "{}", out.stderr);
}

#[test]
fn conflicts_and_blocked_keys_are_never_overwritten_and_exit_3() {
    let w = pair()
        .key("primary", "01", "same-id", &[])
        .key("dr", "01", "same-id", &[]) // same identity, other key material
        .key("primary", "02", "local", &["--no-extractable"])
        .key("primary", "03", "fine", &[])
        .plan(
            &Plan::two_clusters()
                .select(Sel::id("01"))
                .select(Sel::id("02"))
                .select(Sel::id("03"))
                .select(Sel::id("0f")),
        );
    let before = w.run(&["inventory", "plan.yaml", "dr", "--format", "json"]).json();
    let out = w.run(&["apply", "plan.yaml", "--report", "r.json"]);
    assert_eq!(out.code, 3, "{out:?}");
    let r = w.report("r.json");
    let by_id = |id: &str| r.jobs.iter().find(|j| j.key.id == id).cloned().unwrap();
    assert_eq!(by_id("01").action, Action::Conflict);
    assert_eq!(by_id("01").reason.map(|r| r.code()), Some("different-key-material"));
    assert_eq!(by_id("02").action, Action::Blocked);
    assert_eq!(by_id("02").reason.map(|r| r.code()), Some("not-extractable"));
    assert_eq!(by_id("0f").reason.map(|r| r.code()), Some("not-found-on-source"));
    assert_eq!(by_id("03").status, Status::Ok);
    assert_eq!(r.summary.conflict, 1);
    assert_eq!(r.summary.blocked, 2);
    let after = w.run(&["inventory", "plan.yaml", "dr", "--format", "json"]).json();
    let fp = |v: &Value| v["keys"].as_array().unwrap().iter().find(|k| k["id"] == "01").unwrap()["fingerprint"].clone();
    assert_eq!(fp(&before), fp(&after), "the conflicting key on dr is untouched");
}

#[test]
fn one_value_under_another_key_type_is_a_conflict_not_a_copy() {
    // An AES key and a generic secret of one value wrap alike, so their fingerprints are
    // equal: only the key type tells that the target's object is not the source's copy.
    let value = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    let w = World::new().tokens(&["primary", "dr"]);
    w.fixture(&["domain-key", "primary", "dr"]);
    w.fixture(&["import", "primary", "--id", "01", "--label", "k", "--value", value]);
    w.fixture(&[
        "import",
        "dr",
        "--id",
        "01",
        "--label",
        "k",
        "--value",
        value,
        "--generic",
    ]);
    let w = w.plan(&Plan::two_clusters().select(Sel::id("01")));
    let fp = |cluster: &str| {
        let inv = w.run(&["inventory", "plan.yaml", cluster, "--format", "json"]).json();
        inv["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["id"] == "01")
            .unwrap()["fingerprint"]
            .clone()
    };
    assert_eq!(fp("primary"), fp("dr"), "the two objects fingerprint alike");
    let out = w.run(&["apply", "plan.yaml", "--report", "r.json"]);
    assert_eq!(out.code, 3, "{out:?}");
    let r = w.report("r.json");
    let job = r.jobs.iter().find(|j| j.key.id == "01").cloned().unwrap();
    assert_eq!(job.action, Action::Conflict, "{job:?}");
    assert_eq!(job.reason.map(|r| r.code()), Some("different-key-type"));
    let detail = job.detail.clone().unwrap_or_default();
    assert!(detail.contains("aes") && detail.contains("generic-secret"), "{detail}");
    let text = w.run(&["plan", "plan.yaml"]);
    assert!(text.stdout.contains("different-key-type"), "{}", text.stdout);
    let objects = w.fixture(&["objects", "dr"]);
    assert_eq!(objects.matches(" 01 ").count(), 1, "nothing written to dr: {objects}");
}

#[test]
fn odd_length_hmac_keys_sync_and_give_equal_hmacs() {
    // SoftHSM zero-pads a 20-byte generic secret to 24 bytes on unwrap. HMAC pads keys
    // with zeros anyway, so HMAC-only keys are synced and checked by HMAC; others are blocked.
    let w = pair()
        .key("primary", "20", "hmac-20", &["--generic", "--bytes", "20"])
        .plan(&Plan::two_clusters().select(Sel::id("20")));
    let out = w.run(&["apply", "plan.yaml", "--report", "r.json"]);
    if remade("primary") {
        // Kryoptic's RFC 5649 keeps 20 bytes and SoftHSM's re-wrap zero-pads them: the
        // fingerprints of source and copy could never be compared, so it is blocked.
        assert_eq!(out.code, 3, "{out:?}");
        let r = w.report("r.json");
        assert_eq!(r.jobs[0].action, Action::Blocked, "{r:?}");
        assert_eq!(r.jobs[0].reason.map(|r| r.code()), Some("odd-length-secret"));
        assert!(r.jobs[0].detail.as_deref().unwrap_or("").contains("zero-pads"), "{r:?}");
        return;
    }
    assert_eq!(out.code, 0, "{out:?}");
    let r = w.report("r.json");
    let note = r.jobs[0].note.as_deref().unwrap_or_default();
    assert!(
        note.contains("zero-padded to 24 bytes; HMAC results verified equal"),
        "{r:?}"
    );
    assert_eq!(w.hmac("primary", "20"), w.hmac("dr", "20"));
    assert_eq!(w.run(&["plan", "plan.yaml", "--detailed-exitcode"]).code, 0);
}

#[test]
fn login_failures_name_the_cluster_and_never_retry() {
    let w = pair()
        .key("primary", "01", "k", &[])
        .plan(&Plan::two_clusters().select(Sel::id("01")));
    w.write("dr.pin", "wrong-pin");
    let out = w.run(&["plan", "plan.yaml"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("cluster `dr`: login failed: wrong PIN"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("never retries"), "{}", out.stderr);
    assert!(
        !out.stderr.contains("wrong-pin") && !out.stdout.contains("wrong-pin"),
        "the PIN itself is never printed"
    );

    let env_plan = Plan::two_clusters()
        .select(Sel::id("01"))
        .pin("dr", Pin::Env("HSM_SYNC_TEST_DR_PIN".into()));
    let w = w.plan(&env_plan);
    let out = w.run(&["plan", "plan.yaml"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("HSM_SYNC_TEST_DR_PIN is not set"), "{}", out.stderr);
    let out = w.run_env(&["plan", "plan.yaml"], &[("HSM_SYNC_TEST_DR_PIN", "dr-user-pin-0000")]);
    assert_eq!(out.code, 0, "{out:?}");
}

#[test]
fn missing_module_and_missing_token_are_clear_errors() {
    let w = pair().plan(
        &Plan::two_clusters()
            .select(Sel::id("01"))
            .module("primary", "/nonexistent/libpkcs11.so"),
    );
    let out = w.run(&["plan", "plan.yaml"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr
            .contains("cluster `primary`: cannot load PKCS#11 module /nonexistent/libpkcs11.so"),
        "{}",
        out.stderr
    );
    // A vendor's path is not told to install SoftHSM.
    assert!(!out.stderr.contains("apt-get install -y softhsm2"), "{}", out.stderr);
    assert!(out.stderr.contains("vendor's PKCS#11 library"), "{}", out.stderr);

    let w = pair().plan(
        &Plan::two_clusters()
            .select(Sel::id("01"))
            .token("dr", Token::Label("dr-missing".into())),
    );
    let out = w.run(&["plan", "plan.yaml"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("cluster `dr`: no token with label `dr-missing`"),
        "{}",
        out.stderr
    );
    // The tokens of `dr`'s module; `primary` is among them where both are one make.
    let same_make = remade("primary") == remade("dr");
    assert!(
        out.stderr.contains("`dr`") && (!same_make || out.stderr.contains("`primary`")),
        "lists the tokens present: {}",
        out.stderr
    );
}

#[test]
fn plan_errors_point_at_the_yaml_line() {
    let w = pair().plan(
        // Text, not a `Plan`: the assertion below points at a line:col of this very text,
        // and the typo `tragets` is not a field a typed plan can spell.
        &two_cluster_plan("      - id: \"01\"\n").replace("targets: [dr]", "tragets: [dr]"),
    );
    let out = w.run(&["validate", "plan.yaml"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("unknown field `tragets`"), "{}", out.stderr);
    assert!(out.stderr.contains("did you mean `targets`?"), "{}", out.stderr);
    assert!(
        out.stderr.contains("plan.yaml:15:5"),
        "points at line 15: {}",
        out.stderr
    );
}

#[test]
fn the_demo_runs_on_its_own_tokens() {
    let w = World::new();
    let dir = w.path().join("demo");
    let out = w.run(&["demo", "--dir", dir.to_str().unwrap(), "--keys", "12"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("13 to create"), "{}", out.stdout);
    assert!(
        out.stdout
            .contains("0 to create, 0 to update, 0 to delete; 13 unchanged"),
        "{}",
        out.stdout
    );
    let report = read_report(&dir.join("report.json"));
    assert_eq!(report.summary.create, 13);
    let json: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    assert_schema("report", &json, "report");
    assert!(report.jobs.iter().all(|j| j.action == Action::Create));
    // An editor opening the demo's plan finds its schema, and the hint runs as printed.
    let plan = std::fs::read_to_string(dir.join("plan.yaml")).unwrap();
    assert!(
        plan.starts_with("# yaml-language-server: $schema=./plan.schema.json\n"),
        "{plan}"
    );
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("plan.schema.json")).unwrap()).unwrap();
    assert_eq!(schema["title"], "hsm-sync plan", "{schema}");
    assert!(
        out.stdout.contains(env!("CARGO_BIN_EXE_hsm-sync")),
        "the hint names the binary that ran"
    );
    // A second demo in the same directory is refused rather than mixed in.
    assert_eq!(w.run(&["demo", "--dir", dir.to_str().unwrap()]).code, 1);
}

#[test]
fn the_example_plans_are_valid() {
    let w = World::new();
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/plans");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let out = w.run_env(
            &["validate", path.to_str().unwrap()],
            &[("SOFTHSM_MODULE", "/usr/lib/softhsm/libsofthsm2.so")],
        );
        assert_eq!(out.code, 0, "{}: {out:?}", path.display());
        n += 1;
    }
    assert!(n >= 2);
}

#[test]
fn tokens_are_found_by_serial_and_by_slot() {
    let w = pair()
        .key("primary", "01", "k", &[])
        .plan(&Plan::two_clusters().select(Sel::id("01")));
    let inv = w.run(&["inventory", "plan.yaml", "dr", "--format", "json"]).json();
    let serial = inv["serial"].as_str().unwrap().to_string();
    let src = w.run(&["inventory", "plan.yaml", "primary", "--format", "json"]).json();
    let by_serial = Plan::two_clusters()
        .select(Sel::id("01"))
        .token("dr", Token::Serial(serial.clone()))
        .token("primary", Token::Slot(src["slot"].as_u64().expect("slot")));
    let w = w.plan(&by_serial);
    let out = w.run(&["apply", "plan.yaml"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(w.count("dr"), 1);
    let wrong = by_serial.token("dr", Token::Serial("0000000000000000".into()));
    let w = w.plan(&wrong);
    let out = w.run(&["plan", "plan.yaml"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("no token with serial `0000000000000000`"),
        "{}",
        out.stderr
    );
}
