//! The operator's workflow around the diff: saved plans and their staleness check,
//! JUnit for CI, Markdown for pull requests, colour rules, and CloudHSM's `syncKey`.

use crate::world::{assert_schema, handles, pair, ClusterSpec, KeyClass, Plan, Sel, World};

fn handle_of(w: &World, cluster: &str, label: &str) -> String {
    let all = handles(w, cluster);
    all.get(label)
        .unwrap_or_else(|| panic!("no key {label} on {cluster}: {all:?}"))
        .to_string()
}

#[test]
fn a_saved_plan_applies_exactly_what_was_reviewed() {
    let w = pair()
        .key("primary", "a1", "pay", &["--count", "4"])
        .plan(&Plan::two_clusters().select(Sel::label("pay-*")));
    let p = w.run(&["plan", "plan.yaml", "--out", "saved.json", "--detailed-exitcode"]);
    assert_eq!(p.code, 2, "{p:?}");
    let saved = w.json("saved.json");
    assert_eq!(saved["kind"], "hsm-sync/saved-plan");
    assert_eq!(saved["summary"]["create"], 4);
    assert_eq!(saved["tokens"].as_array().map(Vec::len), Some(2));
    assert_schema("saved-plan", &saved, "saved plan");

    // Editing the plan file after review changes nothing: the saved text is what runs.
    w.write("plan.yaml", "version: 1\nthis is not the reviewed plan\n");
    let a = w.run(&["apply", "saved.json", "--report", "report.json"]);
    assert_eq!(a.code, 0, "{a:?}");
    assert_eq!(w.count("dr"), 4, "four copies");
    let report = w.report("report.json");
    assert_eq!(report.summary.create, 4);
    assert_eq!(report.plan, "plan.yaml");

    // The tokens changed (by that very apply): the saved plan is now stale.
    let again = w.run(&["apply", "saved.json"]);
    assert_eq!(again.code, 1, "{again:?}");
    assert!(again.stderr.contains("saved plan is stale"), "{}", again.stderr);
    assert!(
        again.stderr.contains("the keys on `dr` changed (0 key(s) then, 4 now)"),
        "{}",
        again.stderr
    );
    assert_eq!(w.count("dr"), 4, "a stale plan writes nothing");
}

#[test]
fn a_saved_plan_made_against_an_empty_target_is_stale_once_it_gains_a_key() {
    let w = pair()
        .key("primary", "a1", "pay", &["--count", "2"])
        .plan(&Plan::two_clusters().select(Sel::label("pay-*")));
    assert_eq!(w.run(&["plan", "plan.yaml", "--out", "saved.json"]).code, 0);
    // Someone adds an unrelated key to the empty target meanwhile.
    w.fixture(&["keygen", "dr", "--id", "ff", "--label", "stranger"]);
    let a = w.run(&["apply", "saved.json"]);
    assert_eq!(a.code, 1, "{a:?}");
    assert!(a.stderr.contains("saved plan is stale"), "{}", a.stderr);
    assert!(a.stderr.contains("`dr`"), "{}", a.stderr);
    assert_eq!(w.count("dr"), 1, "the stranger only");

    // A change on the source is caught too.
    assert_eq!(w.run(&["plan", "plan.yaml", "--out", "saved.json"]).code, 0);
    w.fixture(&["set-label", "primary", "--id", "a10000", "--label", "renamed"]);
    let b = w.run(&["apply", "saved.json"]);
    assert_eq!(b.code, 1, "{b:?}");
    assert!(b.stderr.contains("the keys on `primary` changed"), "{}", b.stderr);
}

#[test]
fn a_corrupt_saved_plan_is_refused_with_a_diagnostic() {
    let w = pair()
        .key("primary", "a1", "pay", &[])
        .plan(&Plan::two_clusters().select(Sel::label("pay")));
    w.write("saved.json", r#"{"kind": "hsm-sync/saved-plan", "version": "one"}"#);
    let a = w.run(&["apply", "saved.json"]);
    assert_eq!(a.code, 1, "{a:?}");
    assert!(a.stderr.contains("not a valid one"), "{}", a.stderr);
    assert!(!a.stderr.contains("panicked"), "{}", a.stderr);
}

#[test]
fn junit_has_one_case_per_job_and_failures_for_what_exit_3_means() {
    let w = pair()
        .key("primary", "01", "good", &["--count", "2"])
        .key("primary", "02", "local", &["--no-extractable"])
        .plan(
            &Plan::two_clusters()
                .select(Sel::label("good-*"))
                .select(Sel::label("local")),
        );
    let a = w.run(&["apply", "plan.yaml", "--junit", "junit.xml", "--quiet"]);
    assert_eq!(a.code, 3, "{a:?}");
    let xml = w.read("junit.xml");
    assert_eq!(xml.matches("<testcase ").count(), 3, "{xml}");
    assert_eq!(xml.matches("<failure").count(), 1, "{xml}");
    assert!(xml.contains("type=\"blocked\""), "{xml}");
    assert!(xml.contains("message=\"not-extractable\""), "{xml}");
    assert!(xml.contains("create secret-key id=010000 label=good-0"), "{xml}");
}

#[test]
fn markdown_has_a_summary_table_and_a_section_per_target() {
    let w = World::new()
        .tokens(&["primary", "dr", "dr2"])
        .domain_key(&["primary", "dr", "dr2"])
        .key("primary", "01", "k", &["--count", "3"])
        .plan(
            &Plan::two_clusters()
                .cluster(ClusterSpec::new("dr2").cloned_from("primary"))
                .targets(&["dr", "dr2"])
                .select(Sel::label("k-*")),
        );
    let md = w.run(&["plan", "plan.yaml", "--format", "markdown"]);
    assert_eq!(md.code, 0, "{md:?}");
    assert!(
        md.stdout.contains("| create |") || md.stdout.contains("| create"),
        "{}",
        md.stdout
    );
    assert!(md.stdout.contains("## "), "{}", md.stdout);
    let sections = md
        .stdout
        .lines()
        .filter(|l| l.starts_with("### ") || l.starts_with("## "))
        .count();
    assert!(sections >= 2, "one section per target:\n{}", md.stdout);
    assert!(md.stdout.contains("dr2"), "{}", md.stdout);
    assert!(!md.stdout.contains('\u{1b}'), "no escape codes in Markdown");
}

#[test]
fn text_output_has_no_colour_off_a_terminal_or_with_no_color() {
    let w = pair()
        .key("primary", "01", "k", &[])
        .plan(&Plan::two_clusters().select(Sel::label("k")));
    for env in [vec![], vec![("NO_COLOR", "1")]] {
        let p = w.run_env(&["plan", "plan.yaml"], &env);
        assert_eq!(p.code, 0, "{p:?}");
        assert!(p.stdout.contains("+ create"), "{}", p.stdout);
        assert!(
            !p.stdout.contains('\u{1b}'),
            "escape codes in piped output: {:?}",
            p.stdout
        );
    }
}

#[test]
fn sync_key_copies_one_key_by_handle_to_a_named_or_numbered_cluster() {
    let w = pair()
        .key("primary", "01", "one", &[])
        .key("primary", "02", "two", &[])
        .key("primary", "03", "local", &["--no-extractable"])
        .plan(&Plan::two_clusters().select(Sel::label("one")));
    let one = handle_of(&w, "primary", "one");
    let s = w.run(&["sync-key", "plan.yaml", "--source", "primary", &one, "dr"]);
    assert_eq!(s.code, 0, "{s:?}");
    assert_eq!(
        s.stdout.trim_end().lines().last(),
        Some("syncKey success"),
        "{}",
        s.stdout
    );
    assert_eq!(w.count("dr"), 1);

    // By 0-based position: `dr` is clusters[1].
    let two = handle_of(&w, "primary", "two");
    let s = w.run(&["sync-key", "plan.yaml", "--source", "primary", &two, "1"]);
    assert_eq!(s.code, 0, "{s:?}");
    assert!(s.stdout.contains("syncKey success"));
    assert_eq!(w.count("dr"), 2);
    // Same fingerprint on both sides.
    let fp = |c: &str| {
        let inv = w.run(&["inventory", "plan.yaml", c, "--format", "json"]).json();
        inv["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["label"] == "two")
            .unwrap()["fingerprint"]
            .clone()
    };
    assert_eq!(fp("primary"), fp("dr"));

    // Again: unchanged, still success, nothing new.
    let s = w.run(&["sync-key", "plan.yaml", "--source", "primary", &two, "dr"]);
    assert_eq!(s.code, 0, "{s:?}");
    assert_eq!(w.count("dr"), 2);

    // Refusals: not extractable (exit 3), no such handle (exit 1, CONTRACT.md §2: an
    // unknown handle is an error, not a blocked key), no such cluster (exit 1).
    let local = handle_of(&w, "primary", "local");
    let s = w.run(&["sync-key", "plan.yaml", "--source", "primary", &local, "dr"]);
    assert_eq!(s.code, 3, "{s:?}");
    assert!(s.stderr.contains("not-extractable"), "{}", s.stderr);
    assert!(!s.stdout.contains("syncKey success"));
    let s = w.run(&["sync-key", "plan.yaml", "--source", "primary", "999999", "dr"]);
    assert_eq!(s.code, 1, "{s:?}");
    assert!(s.stderr.contains("no key with handle 999999"), "{}", s.stderr);
    let s = w.run(&["sync-key", "plan.yaml", "--source", "primary", &one, "7"]);
    assert_eq!(s.code, 1, "{s:?}");
    assert!(s.stderr.contains("no cluster at position 7"), "{}", s.stderr);
    assert_eq!(w.count("dr"), 2);
}

#[test]
fn shards_together_equal_the_unsharded_run() {
    let w = pair().key("primary", "a1", "k", &["--count", "40"]).key(
        "primary",
        "b1",
        "mac",
        &["--generic", "--count", "5"],
    );
    w.fixture(&[
        "keygen-pair",
        "primary",
        "--id",
        "c1",
        "--label",
        "rsa",
        "--rsa",
        "2048",
    ]);
    let w = w.plan(
        &Plan::two_clusters()
            .select(Sel::label("k-*"))
            .select(Sel::label("mac-*"))
            .select(Sel::id("c1"))
            .select(Sel::id("dead")),
    );
    // The action by name: `Action` has no order to sort by.
    let jobs = |out: &crate::world::Output| -> Vec<(Option<KeyClass>, String, String)> {
        assert_eq!(out.code, 0, "{out:?}");
        let mut v: Vec<_> = out
            .report()
            .jobs
            .iter()
            .map(|j| (j.key.class, j.key.id.clone(), format!("{:?}", j.action)))
            .collect();
        v.sort();
        v
    };
    let whole = jobs(&w.run(&["plan", "plan.yaml", "--format", "json"]));
    assert_eq!(
        whole.len(),
        40 + 5 + 2 + 1,
        "keys, the pair's two halves and one missing id"
    );
    let mut union = Vec::new();
    for i in 1..=3 {
        let part = jobs(&w.run(&["plan", "plan.yaml", "--format", "json", "--shard", &format!("{i}/3")]));
        assert!(
            !part.is_empty() && part.len() < whole.len(),
            "shard {i}/3 has {} jobs",
            part.len()
        );
        let classes_of_c1: Vec<_> = part.iter().filter(|j| j.1 == "c1").collect();
        assert!(
            classes_of_c1.is_empty() || classes_of_c1.len() == 2,
            "the pair stays together"
        );
        union.extend(part);
    }
    union.sort();
    assert_eq!(union, whole, "the shards are disjoint and together are the whole diff");

    // Three runners, one shard each (one through a saved plan), converge like one run.
    assert_eq!(
        w.run(&["plan", "plan.yaml", "--shard", "2/3", "--out", "s2.json"]).code,
        0
    );
    let mut codes = Vec::new();
    for args in [
        vec!["apply", "plan.yaml", "--shard", "1/3"],
        vec!["apply", "s2.json"],
        vec!["apply", "plan.yaml", "--shard", "3/3"],
    ] {
        let a = w.run(&args);
        assert!(a.code == 0 || a.code == 3, "{a:?}");
        codes.push(a.code);
    }
    codes.sort();
    assert_eq!(
        codes,
        vec![0, 0, 3],
        "only the shard holding the missing id `dead` has a blocked job"
    );
    let after = w.run(&["plan", "plan.yaml", "--format", "json"]).report();
    assert_eq!(after.summary.create, 0, "{after:#?}");
    assert_eq!(after.summary.unchanged, 47);
    assert_eq!(w.count("dr"), 45);
    let bad = w.run(&["plan", "plan.yaml", "--shard", "4/3"]);
    assert_eq!(bad.code, 1, "{bad:?}");
    assert!(bad.stderr.contains("not a shard"), "{}", bad.stderr);
}
