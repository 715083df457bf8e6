//! Hostile input: plans built to exhaust memory, stack or patience, modules that are not
//! PKCS#11 libraries, and tokens holding objects no plan anticipated. Each gives a
//! diagnostic and a non-zero exit quickly, never a crash.

use crate::world::{two_cluster_plan, World};

#[test]
fn a_module_that_is_not_a_pkcs11_library_is_a_clear_error() {
    let w = World::new().tokens(&["primary", "dr"]).domain_key(&["primary", "dr"]);
    w.write("not-a-module.so", "this is text, not a shared library\n");
    let libc = ["/lib/x86_64-linux-gnu/libc.so.6", "/usr/lib/x86_64-linux-gnu/libc.so.6"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("libc");
    for module in [
        w.path().join("not-a-module.so").display().to_string(),
        libc.to_string(),
        "/".to_string(),
    ] {
        let plan = two_cluster_plan("      - label: k\n")
            .replacen("{module}", &module, 1)
            .replace("{module}", &crate::world::softhsm().display().to_string());
        w.write("plan.yaml", &plan);
        let out = w.run(&["plan", "plan.yaml"]);
        assert_eq!(out.code, 1, "{module}: {out:?}");
        assert!(out.stderr.contains("cluster `primary`"), "{module}: {}", out.stderr);
        assert!(!out.stderr.contains("panicked"), "{module}: {}", out.stderr);
    }
}

#[test]
fn odd_objects_on_a_token_do_not_crash_the_diff() {
    let w = World::new().tokens(&["primary", "dr"]).domain_key(&["primary", "dr"]);
    let huge_label = "L".repeat(20_000);
    w.fixture(&["keygen", "primary", "--id", "", "--label", "no-id"]);
    w.fixture(&["keygen", "primary", "--id", "", "--label", ""]);
    w.fixture(&["keygen", "primary", "--id", "0b", "--label", &huge_label]);
    w.fixture(&[
        "keygen-pair",
        "primary",
        "--id",
        "0e",
        "--label",
        "edwards",
        "--ec",
        "ed25519",
    ]);
    w.fixture(&["keygen", "dr", "--id", "", "--label", ""]);
    let w = w.plan(&two_cluster_plan("      - label: \"*\"\n      - id: \"0e\"\n"));
    let inv = w.run(&["inventory", "plan.yaml", "primary", "--format", "json"]);
    assert_eq!(inv.code, 0, "{inv:?}");
    let out = w.run(&["plan", "plan.yaml", "--format", "json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let jobs = out.json()["jobs"].as_array().expect("jobs").clone();
    let find = |label: &str, class: &str| {
        jobs.iter()
            .find(|j| j["key"]["label"] == label && j["key"]["class"] == class)
            .unwrap_or_else(|| panic!("no job for {label} {class}: {jobs:#?}"))
    };
    assert_eq!(
        find("no-id", "secret-key")["action"],
        "create",
        "matched by label when the id is empty"
    );
    assert_eq!(find(&huge_label, "secret-key")["action"], "create");
    let ed = find("edwards", "private-key");
    assert_eq!(
        (ed["action"].as_str(), ed["reason"].as_str()),
        (Some("blocked"), Some("unsupported-key-type"))
    );
    let a = w.run(&["apply", "plan.yaml", "--report", "report.json"]);
    assert_eq!(a.code, 3, "blocked keys remain: {a:?}");
    let again = w.run(&["plan", "plan.yaml", "--format", "json"]).json();
    let s = &again["summary"];
    // The nameless keys (no id, no label) on both sides share an identity but not their
    // material: a conflict, never overwritten.
    assert_eq!(
        (
            s["create"].as_u64(),
            s["unchanged"].as_u64(),
            s["conflict"].as_u64(),
            s["blocked"].as_u64()
        ),
        (Some(0), Some(2), Some(1), Some(2)),
        "{again:#}"
    );
}
