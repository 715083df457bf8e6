//! What a plan means when its selectors disagree, miss, or split a pair (issue 16 items
//! 3–7): the same key both present and absent, selectors that match nothing, the exit
//! codes of `plan --detailed-exitcode`, `sync-key` with an unknown handle, and key pairs
//! that travel together.

use crate::world::{assert_schema, pair, Action, KeyClass, Plan, Sel};
use hsm_sync::domain::reason::Reason;

#[test]
fn a_key_selected_present_and_absent_is_refused_naming_both_selectors() {
    let w = pair()
        .key("primary", "01", "app-aes-1", &[])
        .key("primary", "02", "app-aes-2", &[])
        .plan(
            &Plan::two_clusters()
                .select(Sel::label("app-*"))
                .select(Sel::label("app-aes-2").absent()),
        );
    // Two different selectors: valid offline; the overlap is only known from the inventory.
    let v = w.run(&["validate", "plan.yaml"]);
    assert_eq!(v.code, 0, "{v:?}");
    for args in [&["plan", "plan.yaml"][..], &["apply", "plan.yaml", "--allow-destroy"]] {
        let out = w.run(args);
        assert_eq!(out.code, 1, "{args:?}: {out:?}");
        for needle in ["label:app-*", "label:app-aes-2", "app-aes-2", "nothing was changed"] {
            assert!(out.stderr.contains(needle), "{args:?}: no {needle:?} in {}", out.stderr);
        }
    }
    assert_eq!(w.count("dr"), 0, "nothing written");
}

#[test]
fn one_selector_both_present_and_absent_is_a_validate_error() {
    let w = pair().plan(
        &Plan::two_clusters()
            .select(Sel::label("app-*"))
            .select(Sel::label("app-*").absent()),
    );
    let v = w.run(&["validate", "plan.yaml"]);
    assert_eq!(v.code, 1, "{v:?}");
    assert!(v.stderr.contains("plan::conflicting-state"), "{}", v.stderr);
    assert!(v.stderr.contains("label:app-*` (present)"), "{}", v.stderr);
    assert!(v.stderr.contains("label:app-*` (absent)"), "{}", v.stderr);
}

#[test]
fn every_present_selector_that_matches_nothing_warns_and_exits_3() {
    let w = pair().key("primary", "01", "payments-1", &[]).plan(
        &Plan::two_clusters()
            .select(Sel::label("payments-*"))
            .select(Sel::label("payment-*"))
            .select(Sel::id("0f"))
            .select(Sel::handle(999999)),
    );
    let p = w.run(&["plan", "plan.yaml", "--format", "json"]);
    assert_eq!(p.code, 0, "{p:?}");
    assert_schema("report", &p.json(), "plan --format json");
    let r = p.report();
    let codes: Vec<&str> = r.warnings.iter().map(|w| w.code.as_str()).collect();
    assert_eq!(codes, vec!["empty-selector"; 3], "{r:#?}");
    for sel in ["label:payment-*", "id:0f", "handle:999999"] {
        assert!(r.warnings.iter().any(|w| w.message.contains(sel)), "{sel}: {r:#?}");
    }
    let text = w.run(&["plan", "plan.yaml"]);
    assert_eq!(
        text.stdout.lines().filter(|l| l.starts_with("warning:")).count(),
        3,
        "{}",
        text.stdout
    );
    let md = w.run(&["plan", "plan.yaml", "--format", "markdown"]);
    assert_eq!(md.stdout.matches("> warning").count(), 3, "{}", md.stdout);
    // Changes pending win: 2.
    assert_eq!(w.run(&["plan", "plan.yaml", "--detailed-exitcode"]).code, 2);
    let a = w.run(&["apply", "plan.yaml", "--report", "r.json"]);
    assert_eq!(a.code, 3, "{a:?}");
    assert!(a.stderr.contains("label:payment-*"), "{}", a.stderr);
    assert_schema("report", &w.json("r.json"), "apply's report");
    assert_eq!(w.report("r.json").warnings.len(), 3);
    assert_eq!(w.count("dr"), 1, "the key that was selected was still copied");
    // Nothing to apply, but the selectors still match nothing: 3, not a green 0.
    assert_eq!(w.run(&["plan", "plan.yaml", "--detailed-exitcode"]).code, 3);

    // `allow_empty: true` opts each one out.
    let allowed = Plan::two_clusters()
        .select(Sel::label("payments-*"))
        .select(Sel::label("payment-*").allow_empty())
        .select(Sel::id("0f").allow_empty())
        .select(Sel::handle(999999).allow_empty());
    let w = w.plan(&allowed);
    assert_eq!(w.run(&["validate", "plan.yaml"]).code, 0);
    let r = w.run(&["plan", "plan.yaml", "--format", "json"]).report();
    assert!(r.warnings.is_empty(), "{allowed}\n{r:#?}");
    assert_eq!(w.run(&["plan", "plan.yaml", "--detailed-exitcode"]).code, 0);
    let a = w.run(&["apply", "plan.yaml"]);
    assert_eq!(a.code, 0, "{a:?}");
}

#[test]
fn plan_detailed_exitcode_is_3_for_a_conflict_with_nothing_to_apply() {
    let w = pair()
        .key("primary", "01", "same-id", &[])
        .key("dr", "01", "same-id", &[]) // other key material
        .plan(&Plan::two_clusters().select(Sel::id("01")));
    let p = w.run(&["plan", "plan.yaml", "--detailed-exitcode"]);
    assert_eq!(p.code, 3, "{p:?}");
    assert_eq!(w.run(&["plan", "plan.yaml"]).code, 0, "without the flag, plan succeeds");
    let w = w
        .key("primary", "02", "new", &[])
        .plan(&Plan::two_clusters().select(Sel::id("01")).select(Sel::id("02")));
    assert_eq!(w.run(&["plan", "plan.yaml", "--detailed-exitcode"]).code, 2);
}

#[test]
fn sync_key_names_an_unknown_handle_and_prints_what_it_copied() {
    let w = pair()
        .key("primary", "01", "one", &[])
        .plan(&Plan::two_clusters().select(Sel::label("one")));
    let s = w.run(&["sync-key", "plan.yaml", "--source", "primary", "999999", "dr"]);
    assert_eq!(s.code, 1, "{s:?}");
    assert!(
        s.stderr.contains("no key with handle 999999 on cluster `primary`"),
        "{}",
        s.stderr
    );
    assert!(
        s.stderr.contains("hsm-sync inventory plan.yaml primary"),
        "{}",
        s.stderr
    );
    assert_eq!(w.count("dr"), 0);

    let inv = w.run(&["inventory", "plan.yaml", "primary", "--format", "json"]).json();
    let handle = inv["keys"][0]["handle"].to_string();
    let s = w.run(&["sync-key", "plan.yaml", "--source", "primary", &handle, "dr"]);
    assert_eq!(s.code, 0, "{s:?}");
    assert!(!s.stdout.contains("Apply:"), "{}", s.stdout);
    let lines: Vec<&str> = s.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", s.stdout);
    for needle in ["id=01", "label=\"one\"", "class=secret-key", "`primary`", "`dr`"] {
        assert!(lines[0].contains(needle), "no {needle} in {:?}", lines[0]);
    }
    assert_eq!(lines[1], "syncKey success");
}

#[test]
fn a_blocked_half_blocks_its_pair_and_every_reason_has_its_help() {
    let w = pair()
        .key("primary", "05", "local-public", &["--no-extractable", "--public"])
        .key_pair("primary", "07", "p", &["--ec", "p256", "--no-extractable"])
        .plan(&Plan::two_clusters().select(Sel::id("07")).select(Sel::id("05")));
    let r = w.run(&["plan", "plan.yaml", "--format", "json"]).report();
    let job = |class, id: &str| {
        r.jobs
            .iter()
            .find(|j| j.key.class == Some(class) && j.key.id == id)
            .unwrap_or_else(|| panic!("{class:?} {id}: {r:#?}"))
    };
    let private = job(KeyClass::PrivateKey, "07");
    assert_eq!(private.action, Action::Blocked);
    assert_eq!(private.reason, Some(Reason::NotExtractable));
    let public = job(KeyClass::PublicKey, "07");
    assert_eq!(public.action, Action::Blocked, "{r:#?}");
    assert_eq!(public.reason, Some(Reason::PairIncomplete));
    assert!(
        public.detail.as_deref().unwrap_or_default().contains("not-extractable"),
        "{public:#?}"
    );
    let both = job(KeyClass::SecretKey, "05");
    assert_eq!(
        both.reasons,
        vec![Reason::NotOwned, Reason::NotExtractable],
        "{both:#?}"
    );

    let extractable = "the key was made with CKA_EXTRACTABLE false and can never leave its token";
    let owned = "made with CKA_PRIVATE false — pkcs11-tool's default — so a crypto-user does not own it";
    let text = w.run(&["plan", "plan.yaml"]).stdout;
    assert!(
        text.contains(&format!("help: not-extractable: {extractable}")),
        "{text}"
    );
    assert!(text.contains(&format!("help: not-owned: {owned}")), "{text}");
    assert!(text.contains("help: pair-incomplete:"), "{text}");
    let md = w.run(&["plan", "plan.yaml", "--format", "markdown"]).stdout;
    assert!(md.contains(extractable) && md.contains(owned), "{md}");
    let a = w.run(&["apply", "plan.yaml"]);
    assert_eq!(a.code, 3, "{a:?}");
    assert!(
        a.stderr.contains(extractable) && a.stderr.contains(owned),
        "{}",
        a.stderr
    );
    assert_eq!(w.count("dr"), 0, "neither half travelled");
}
