//! Hostile input: plans built to exhaust memory, stack or patience, modules that are not
//! PKCS#11 libraries, and tokens holding objects no plan anticipated. Each gives a
//! diagnostic and a non-zero exit quickly, never a crash.

use std::time::{Duration, Instant};

use crate::world::{pair, Action, KeyClass, Plan, Sel, World};
use hsm_sync::domain::key::KeyType;

/// Validates a plan written by `make`, returning the output; asserts a clean refusal.
fn refused(w: &World, name: &str, bytes: &[u8], expect: &str) {
    std::fs::write(w.path().join(name), bytes).expect("write plan");
    let started = Instant::now();
    let out = w.run(&["validate", name]);
    let took = started.elapsed();
    assert_eq!(out.code, 1, "{name}: {}", &out.stderr[..out.stderr.len().min(2000)]);
    assert!(
        !out.stderr.contains("panicked") && !out.stderr.contains("overflow"),
        "{name}: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains(expect),
        "{name}: expected `{expect}` in:\n{}",
        &out.stderr[..out.stderr.len().min(2000)]
    );
    assert!(
        out.stderr.len() < 64 * 1024,
        "{name}: the diagnostic is bounded, not {} bytes",
        out.stderr.len()
    );
    assert!(took < Duration::from_secs(10), "{name}: refused in {took:?}");
}

#[test]
fn hostile_plans_get_a_diagnostic_quickly() {
    let w = World::new();
    // Billion laughs: nine levels of nine aliases.
    let mut laughs =
        String::from("version: 1\na: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n");
    let mut prev = 'a';
    for c in 'b'..='j' {
        laughs.push_str(&format!(
            "{c}: &{c} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"
        ));
        prev = c;
    }
    laughs.push_str(&format!("clusters: *{prev}\nsync: []\n"));
    refused(&w, "laughs.yaml", laughs.as_bytes(), "plan::");
    // Deep nesting, flow and block style.
    let flow = format!("version: 1\nclusters: {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
    refused(&w, "flow.yaml", flow.as_bytes(), "plan::");
    let mut block = String::from("version: 1\nclusters:\n");
    for i in 1..3000 {
        block.push_str(&format!("{}k{i}:\n", "  ".repeat(i)));
    }
    refused(&w, "block.yaml", block.as_bytes(), "plan::");
    // Binary, and text in another encoding.
    let binary: Vec<u8> = (0..=255u8).cycle().take(25_600).collect();
    refused(&w, "binary.yaml", &binary, "not valid UTF-8");
    refused(&w, "latin1.yaml", b"version: 1\n# caf\xe9\n", "not valid UTF-8");
    // Too large: refused before it is read.
    let mut huge = b"version: 1\n".to_vec();
    huge.resize(17 * 1024 * 1024, b'#');
    refused(&w, "huge.yaml", &huge, "larger than");
    // One endless line: the diagnostic shows where, not the line.
    let line = format!("version: 1\nclusters: {{ {} }}\n", "x".repeat(4 * 1024 * 1024));
    refused(&w, "line.yaml", line.as_bytes(), "plan::");
}

#[test]
fn a_module_that_is_not_a_pkcs11_library_is_a_clear_error() {
    let w = pair();
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
        let plan = Plan::two_clusters().select(Sel::label("k")).module("primary", &module);
        w.write("plan.yaml", &plan.yaml());
        let out = w.run(&["plan", "plan.yaml"]);
        assert_eq!(out.code, 1, "{module}: {out:?}");
        assert!(out.stderr.contains("cluster `primary`"), "{module}: {}", out.stderr);
        assert!(!out.stderr.contains("panicked"), "{module}: {}", out.stderr);
    }
}

#[test]
fn odd_objects_on_a_token_do_not_crash_the_diff() {
    let w = pair();
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
    let w = w.plan(&Plan::two_clusters().select(Sel::label("*")).select(Sel::id("0e")));
    let inv = w.run(&["inventory", "plan.yaml", "primary", "--format", "json"]);
    assert_eq!(inv.code, 0, "{inv:?}");
    let out = w.run(&["plan", "plan.yaml", "--format", "json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let jobs = out.report().jobs;
    let find = |label: &str, class: KeyClass| {
        jobs.iter()
            .find(|j| j.key.label == label && j.key.class == Some(class))
            .unwrap_or_else(|| panic!("no job for {label} {class:?}: {jobs:#?}"))
    };
    assert_eq!(
        find("no-id", KeyClass::SecretKey).action,
        Action::Create,
        "matched by label when the id is empty"
    );
    assert_eq!(find(&huge_label, KeyClass::SecretKey).action, Action::Create);
    // A type PKCS#11 names is never `unsupported-key-type`: no token pair here can
    // carry an Ed25519 key, and the plan says so, both halves.
    for class in [KeyClass::PrivateKey, KeyClass::PublicKey] {
        let ed = find("edwards", class);
        assert_eq!(
            (ed.action, ed.reason.map(|r| r.code())),
            (Action::Blocked, Some("no-common-mechanism")),
            "{ed:?}"
        );
        assert_eq!(ed.key.key_type, Some(KeyType::EcEdwards), "{ed:?}");
        assert!(ed.detail.as_deref().unwrap_or("").contains("Ed25519"), "{ed:?}");
    }
    let a = w.run(&["apply", "plan.yaml", "--report", "report.json"]);
    assert_eq!(a.code, 3, "blocked keys remain: {a:?}");
    let again = w.run(&["plan", "plan.yaml", "--format", "json"]).report();
    let s = &again.summary;
    // The nameless keys (no id, no label) on both sides share an identity but not their
    // material: a conflict, never overwritten.
    assert_eq!(
        (s.create, s.unchanged, s.conflict, s.blocked),
        (0, 2, 1, 2),
        "{again:#?}"
    );
}
