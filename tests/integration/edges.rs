//! The edges of a run that issue 13 found broken: untrusted saved plans, absurd limits, a
//! report that cannot be written after keys were copied, a reader that closes the pipe,
//! and reasons a pipeline can select on.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use crate::world::{handles, Pin, Plan, Sel, World};
use serde_json::Value;

fn pair() -> World {
    World::new().tokens(&["primary", "dr"]).domain_key(&["primary", "dr"])
}

#[test]
fn a_saved_plan_with_an_impossible_shard_is_refused_without_a_panic() {
    let w = pair()
        .key("primary", "a1", "pay", &["--count", "2"])
        .plan(&Plan::two_clusters().select(Sel::label("pay-*")));
    assert_eq!(w.run(&["plan", "plan.yaml", "--out", "saved.json"]).code, 0);
    let mut saved: Value = serde_json::from_str(&w.read("saved.json")).unwrap();
    for (index, count) in [(1, 0), (0, 2), (3, 2)] {
        saved["shard"] = serde_json::json!({"index": index, "count": count});
        w.write("bad.json", &saved.to_string());
        let a = w.run(&["apply", "bad.json"]);
        assert_eq!(a.code, 1, "shard {index}/{count}: {a:?}");
        assert!(!a.stderr.contains("panicked"), "{}", a.stderr);
        assert!(a.stderr.contains("not a shard"), "{}", a.stderr);
    }
    assert_eq!(w.count("dr"), 0, "nothing was copied");
}

#[test]
fn absurd_parallelism_is_a_diagnostic_not_gigabytes() {
    let w = pair()
        .key("primary", "a1", "pay", &[])
        .plan(&Plan::two_clusters().select(Sel::label("pay*")).parallelism(100000000));
    let v = w.run(&["validate", "plan.yaml"]);
    assert_eq!(v.code, 1, "{v:?}");
    assert!(v.stderr.contains("more than the 256 workers"), "{}", v.stderr);
    w.write("ok.yaml", &Plan::two_clusters().select(Sel::label("pay*")).yaml());
    let j = w.run(&["apply", "ok.yaml", "--jobs", "100000000"]);
    assert_eq!(j.code, 1, "{j:?}");
    assert!(j.stderr.contains("from 1 to 256"), "{}", j.stderr);
    assert_eq!(w.count("dr"), 0, "nothing was copied");
}

#[test]
fn a_report_that_cannot_be_written_after_copies_exits_3_with_the_summary() {
    let w = pair()
        .key("primary", "a1", "pay", &[])
        .plan(&Plan::two_clusters().select(Sel::label("pay*")));
    let a = w.run(&["apply", "plan.yaml", "--report", "/nonexistent/dir/r.json"]);
    assert_eq!(a.code, 3, "keys were copied, so not 'nothing changed': {a:?}");
    assert!(a.stdout.contains("Apply: 1 created"), "the summary is printed: {a:?}");
    assert!(a.stderr.contains("/nonexistent/dir/r.json"), "{}", a.stderr);
    assert_eq!(w.count("dr"), 1, "the copy was made");

    // Nothing to change: the same failure is exit 1, nothing changed.
    let b = w.run(&["apply", "plan.yaml", "--report", "/nonexistent/dir/r.json"]);
    assert_eq!(b.code, 1, "{b:?}");
    assert!(b.stdout.contains("1 unchanged"), "{b:?}");
}

#[test]
fn report_dash_is_stdout_and_stdout_is_the_report_alone() {
    let w = pair()
        .key("primary", "a1", "pay", &[])
        .plan(&Plan::two_clusters().select(Sel::label("pay*")));
    let a = w.run(&["apply", "plan.yaml", "--report", "-"]);
    assert_eq!(a.code, 0, "{a:?}");
    let report: hsm_sync::report::Report = serde_json::from_str(&a.stdout).expect("stdout is the report");
    assert_eq!(report.summary.create, 1);
    assert!(
        a.stderr.contains("Apply: 1 created"),
        "the summary moves to stderr: {a:?}"
    );
    assert!(!w.path().join("-").exists(), "no file named `-`");
}

#[test]
fn inventory_into_a_closed_pipe_ends_quietly() {
    let w = pair()
        .key("primary", "a1", "pay", &["--count", "1500"])
        .plan(&Plan::two_clusters().select(Sel::label("pay-*")));
    // `hsm-sync inventory … | head -1`: read one line, then close the pipe.
    let mut child = Command::new(env!("CARGO_BIN_EXE_hsm-sync"))
        .args(["inventory", "plan.yaml", "primary"])
        .current_dir(w.path())
        .env("SOFTHSM2_CONF", w.path().join("softhsm2.conf"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("hsm-sync runs");
    let mut first = String::new();
    {
        let stdout = child.stdout.take().expect("stdout");
        BufReader::new(stdout).read_line(&mut first).expect("a line");
    }
    let out = child.wait_with_output().expect("exits");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(first.starts_with("cluster primary"), "{first}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
        "{stderr}"
    );
}

#[test]
fn off_a_terminal_apply_prints_a_progress_line_every_interval_unless_quiet() {
    let w = pair()
        .key("primary", "a1", "pay", &["--count", "600"])
        .plan(&Plan::two_clusters().select(Sel::label("pay-*")));
    let a = w.run(&["apply", "plan.yaml", "--progress-interval", "50ms"]);
    assert_eq!(a.code, 0, "{a:?}");
    let lines: Vec<&str> = a.stderr.lines().filter(|l| l.starts_with("progress: ")).collect();
    assert!(!lines.is_empty(), "a CI log sees progress: {a:?}");
    assert!(
        lines
            .iter()
            .all(|l| l.contains("/600 jobs") && l.contains("keys/s") && l.contains("eta")),
        "{lines:?}"
    );

    w.fixture(&["keygen", "primary", "--id", "b1", "--label", "more", "--count", "300"]);
    w.write("plan.yaml", &Plan::two_clusters().select(Sel::label("*")).yaml());
    let q = w.run(&["apply", "plan.yaml", "--quiet", "--progress-interval", "10ms"]);
    assert_eq!(q.code, 0, "{q:?}");
    assert!(!q.stderr.contains("progress: "), "quiet means no progress: {q:?}");
    let bad = w.run(&["apply", "plan.yaml", "--progress-interval", "0s"]);
    assert_eq!(bad.code, 1, "{bad:?}");
    assert!(bad.stderr.contains("too short"), "{bad:?}");
}

#[test]
fn the_hint_after_plan_out_is_the_command_that_works() {
    let w = pair()
        .key("primary", "a1", "pay", &[])
        .plan(&Plan::two_clusters().select(Sel::label("pay*")));
    let first = w.run(&["plan", "plan.yaml", "--out", "s.json"]);
    assert!(first.stderr.contains("hsm-sync apply s.json`"), "{first:?}");
    assert_eq!(w.run(&["apply", "plan.yaml"]).code, 0);
    w.write(
        "plan.yaml",
        &Plan::two_clusters().select(Sel::label("pay*").absent()).yaml(),
    );
    let p = w.run(&["plan", "plan.yaml", "--out", "s.json"]);
    assert!(p.stderr.contains("hsm-sync apply s.json --allow-destroy`"), "{p:?}");
    let a = w.run(&["apply", "s.json", "--allow-destroy"]);
    assert_eq!(a.code, 0, "the hinted command works: {a:?}");
    assert_eq!(w.count("dr"), 0);
}

#[test]
fn a_report_given_to_apply_is_named_and_a_missing_pin_is_said_once() {
    let plan = Plan::two_clusters().select(Sel::label("pay*"));
    let w = pair().key("primary", "a1", "pay", &[]).plan(&plan);
    assert_eq!(w.run(&["apply", "plan.yaml", "--report", "r.json"]).code, 0);
    let a = w.run(&["apply", "r.json"]);
    assert_eq!(a.code, 1, "{a:?}");
    assert!(a.stderr.contains("it is an hsm-sync report, not a plan"), "{a:?}");
    assert!(!a.stderr.contains("unknown field"), "not a list of plan errors: {a:?}");

    w.write(
        "env.yaml",
        &plan.pin("dr", Pin::Env("HSM_SYNC_TEST_UNSET_PIN".into())).yaml(),
    );
    let v = w.run(&["validate", "env.yaml", "--online"]);
    assert_eq!(v.code, 1, "{v:?}");
    assert_eq!(
        v.stderr.matches("HSM_SYNC_TEST_UNSET_PIN is not set").count(),
        1,
        "said once: {v:?}"
    );
}

#[test]
fn offline_validate_needs_no_secret_and_online_lists_every_missing_one() {
    let w = pair()
        .key("primary", "a1", "pay", &[])
        .plan(&Plan::two_clusters().select(Sel::label("pay*")));
    let plan = Plan::two_clusters()
        .select(Sel::label("pay*"))
        .pin("primary", Pin::Env("HSM_SYNC_TEST_NO_PRIMARY_PIN".into()))
        .pin("dr", Pin::Env("HSM_SYNC_TEST_NO_DR_PIN".into()));
    w.write("ci.yaml", &plan.yaml());
    // A CI lint job: no PIN, no token, and a module path that is not on this machine.
    w.write(
        "lint.yaml",
        &plan.module_all(Path::new("/opt/vendor/lib/libvendor-pkcs11.so")).yaml(),
    );
    let lint = w.run(&["validate", "lint.yaml"]);
    assert_eq!(lint.code, 0, "{lint:?}");
    assert!(
        lint.stderr
            .contains("/opt/vendor/lib/libvendor-pkcs11.so does not exist here"),
        "{lint:?}"
    );
    let online = w.run(&["validate", "ci.yaml", "--online"]);
    assert_eq!(online.code, 1, "{online:?}");
    for var in ["HSM_SYNC_TEST_NO_PRIMARY_PIN", "HSM_SYNC_TEST_NO_DR_PIN"] {
        assert!(
            online.stderr.contains(var),
            "every missing PIN variable is named: {online:?}"
        );
    }
    let apply = w.run(&["apply", "ci.yaml"]);
    assert_eq!(apply.code, 1, "{apply:?}");
    assert_eq!(w.count("dr"), 0, "nothing was tried");
}

#[test]
fn help_says_what_role_and_user_do() {
    let w = World::new();
    let h = w.run(&["--help"]);
    assert_eq!(h.code, 0, "{h:?}");
    assert!(
        h.stdout
            .contains("role: crypto-officer  log in the same way (CKU_USER)"),
        "{}",
        h.stdout
    );
    assert!(
        h.stdout.contains("not sent to\n                        the token"),
        "{}",
        h.stdout
    );
}

#[test]
fn every_handle_printed_is_the_one_inventory_prints() {
    let w = pair()
        .key("primary", "a1", "bulk", &["--count", "300"])
        .plan(&Plan::two_clusters().select(Sel::label("bulk-*")));
    let inv = handles(&w, "primary");
    let mismatches = |jobs: &[hsm_sync::report::JobRecord]| -> Vec<String> {
        jobs.iter()
            .filter(|j| j.key.handle.map(|h| h.number()) != inv.get(&j.key.label).copied())
            .map(|j| {
                format!(
                    "{} {:?} (inventory {:?})",
                    j.key.label,
                    j.key.handle,
                    inv.get(&j.key.label)
                )
            })
            .collect()
    };
    let plan = w.run(&["plan", "plan.yaml", "--format", "json"]);
    assert_eq!(mismatches(&plan.report().jobs), Vec::<String>::new(), "plan");
    assert_eq!(w.run(&["plan", "plan.yaml", "--out", "s.json"]).code, 0);
    let saved: serde_json::Value = serde_json::from_str(&w.read("s.json")).unwrap();
    let saved_jobs: Vec<hsm_sync::report::JobRecord> = serde_json::from_value(saved["jobs"].clone()).unwrap();
    assert_eq!(mismatches(&saved_jobs), Vec::<String>::new(), "saved plan");
    // Applying the saved plan once numbered 32 of 300 keys differently (issue 16).
    assert_eq!(w.run(&["apply", "s.json", "--report", "r.json"]).code, 0);
    assert_eq!(
        mismatches(&w.report("r.json").jobs),
        Vec::<String>::new(),
        "apply SAVED"
    );
    assert_eq!(handles(&w, "primary"), inv, "inventory after apply");
    // sync-key with inventory's handle copies that very key.
    w.fixture(&["keygen", "primary", "--id", "ff", "--label", "one-more"]);
    let h = handles(&w, "primary")["one-more"].to_string();
    let s = w.run(&["sync-key", "plan.yaml", "--source", "primary", &h, "dr"]);
    assert_eq!(s.code, 0, "{s:?}");
    assert!(
        s.stdout.contains("one-more"),
        "sync-key copied the key inventory named: {s:?}"
    );
}

/// CloudHSM SDK5's handles last one session (its profile says so): a `handle:` selector or
/// `sync-key`'s handle is refused there before any login, naming the selectors that
/// work, and `inventory` says its handles are this run's only. A SoftHSM source whose
/// PIN is `app:…` stands in, with `profile: AWS CloudHSM`.
#[test]
fn handles_are_refused_where_the_profile_says_they_last_one_session() {
    let w = pair().key("primary", "01", "k", &[]);
    let password = w.read("primary.pin");
    let password = password.trim().to_string();
    w.fixture(&["set-pin", "primary", "--new", &format!("app:{password}")]);
    let cloudhsm = |p: Plan| {
        p.edit("primary", |c| c.profile = Some("AWS CloudHSM".into()))
            .state_file("state")
    };
    let w = w.plan(&cloudhsm(Plan::two_clusters().select(Sel::id("01"))));
    let handle = handles(&w, "primary")["k"].to_string();
    let inv = w.run(&["inventory", "plan.yaml", "primary", "--format", "json"]);
    assert_eq!(inv.json()["handles_stable"], false, "{inv:?}");
    let inv = w.run(&["inventory", "plan.yaml", "primary"]);
    assert!(
        inv.stdout.contains("handles are this session's only (AWS CloudHSM)"),
        "{inv:?}"
    );

    let by_handle = w.plan(&cloudhsm(
        Plan::two_clusters().select(Sel::handle(handle.parse().unwrap_or(0))),
    ));
    for args in [
        vec!["plan", "plan.yaml"],
        vec!["apply", "plan.yaml"],
        vec!["sync-key", "plan.yaml", "--source", "primary", &handle, "dr"],
    ] {
        let r = by_handle.run(&args);
        assert_eq!(r.code, 1, "{args:?}: {r:?}");
        assert!(r.stderr.contains("hsm::session_handles"), "{args:?}: {}", r.stderr);
        assert!(
            r.stderr.contains(&format!("`handle:{handle}`")),
            "{args:?}: {}",
            r.stderr
        );
        assert!(
            r.stderr.contains("select the key by `id:` or `label:`"),
            "{args:?}: {}",
            r.stderr
        );
        assert!(!r.stderr.contains(&password), "no PIN in any output");
    }
    assert!(handles(&by_handle, "dr").is_empty(), "nothing was copied");
    // notify's `--key handle:N` is refused alike, before any login or delivery.
    let key = format!("handle:{handle}");
    let n = by_handle.run(&["notify", "plan.yaml", "--key", &key]);
    assert_eq!(n.code, 1, "{n:?}");
    assert!(n.stderr.contains("hsm::session_handles"), "{}", n.stderr);
    assert!(n.stderr.contains(&format!("`{key}` (from `--key`)")), "{}", n.stderr);
    assert!(!n.stderr.contains(&password), "no PIN in any output");

    // The same key by id travels.
    let by_id = by_handle.plan(&cloudhsm(Plan::two_clusters().select(Sel::id("01"))));
    let a = by_id.run(&["apply", "plan.yaml"]);
    assert_eq!(a.code, 0, "{a:?}");
    assert_eq!(handles(&by_id, "dr").len(), 1);
}
