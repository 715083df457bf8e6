//! Accounts and faults with a real token underneath: the token behind the test-only
//! `pkcs11-shim` (locked PINs, injected `CKR_*` failures, a call log) or OpenSC's
//! `pkcs11-spy` (an independent record of every call). SoftHSM here; under
//! `on_kryoptic_dr` and `on_kryoptic_primary` that token is Kryoptic (issue 14): the shim
//! and the spy forward to one module per process, so each test routes the token it
//! watches through them and reaches the other directly.

use std::path::PathBuf;

use crate::world::{kryoptic, pair, remade, shim, softhsm, JobRecord, Plan, Report, Sel, Status, World};

/// The two-cluster plan selecting `sel`, with `dr` (or both clusters) reached through
/// `module`.
fn plan_via(module: &str, both: bool, sel: Sel) -> String {
    let plan = Plan::two_clusters().select(sel).module("dr", module);
    if both { plan.module("primary", module) } else { plan }.yaml()
}

/// The module behind the shim or the spy in front of `token`: that token's make.
fn real_module(token: &str) -> PathBuf {
    if remade(token) {
        kryoptic()
    } else {
        softhsm()
    }
}

/// `hsm-sync args…` with `env`, the shim in front of `token` forwarding to its make.
fn run_shimmed(w: &World, token: &str, args: &[&str], env: &[(&str, &str)]) -> crate::world::Output {
    let target = real_module(token).display().to_string();
    let mut all = vec![("HSM_SYNC_SHIM_TARGET", target.as_str())];
    all.extend_from_slice(env);
    w.run_env(args, &all)
}

fn calls(w: &World, log: &str, f: &str) -> Vec<String> {
    std::fs::read_to_string(w.path().join(log))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.split_whitespace().next() == Some(f))
        .map(String::from)
        .collect()
}

#[test]
fn a_locked_pin_or_one_on_its_final_try_is_never_tried() {
    let shim = shim();
    let w = pair().key("primary", "01", "k", &[]);
    w.write(
        "plan.yaml",
        &plan_via(&shim.display().to_string(), false, Sel::label("k")),
    );
    for (flag, words) in [
        ("user_pin_locked", "the user PIN is locked"),
        ("user_pin_final_try", "final try"),
    ] {
        let log = format!("{flag}.log");
        let out = run_shimmed(
            &w,
            "dr",
            &["apply", "plan.yaml"],
            &[("HSM_SYNC_SHIM_TOKEN_FLAGS", flag), ("HSM_SYNC_SHIM_LOG", &log)],
        );
        assert_eq!(out.code, 1, "{out:?}");
        assert!(out.stderr.contains("cluster `dr`"), "{}", out.stderr);
        assert!(out.stderr.contains(words), "{}", out.stderr);
        assert!(out.stderr.contains("did not try to log in"), "{}", out.stderr);
        assert!(!calls(&w, &log, "C_GetTokenInfo").is_empty(), "the shim saw the run");
        assert_eq!(
            calls(&w, &log, "C_Login"),
            Vec::<String>::new(),
            "no login attempt at all"
        );
    }
    assert_eq!(w.count("dr"), 0, "nothing written");
}

#[test]
fn a_wrong_pin_is_tried_exactly_once_per_run_as_pkcs11_spy_records() {
    let spy = [
        "/usr/lib/x86_64-linux-gnu/pkcs11-spy.so",
        "/usr/lib/x86_64-linux-gnu/pkcs11/pkcs11-spy.so",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).exists())
    .unwrap_or_else(|| panic!("OpenSC's pkcs11-spy is missing: apt-get install -y opensc"));
    let w = pair().key("primary", "01", "k", &[]);
    // Both tokens through the spy where they are of one make; else only dr. OpenSC 0.23's
    // spy logs nothing past C_GetInterface in front of Kryoptic (a PKCS#11 3.0 module's
    // interface bypasses it), so a Kryoptic dr is watched by the shim's log instead.
    let both = remade("primary") == remade("dr");
    let spied = !remade("dr");
    let shim = shim().display().to_string();
    let module = if spied { spy } else { shim.as_str() };
    w.write("plan.yaml", &plan_via(module, both && spied, Sel::label("k")));
    w.write("dr.pin", "not-the-pin\n");
    let soft = real_module("dr").display().to_string();
    for cmd in ["validate", "plan", "apply"] {
        let log = format!("{cmd}.spy");
        let args: Vec<&str> = if cmd == "validate" {
            vec![cmd, "plan.yaml", "--online"]
        } else {
            vec![cmd, "plan.yaml"]
        };
        let out = match spied {
            true => w.run_env(&args, &[("PKCS11SPY", &soft), ("PKCS11SPY_OUTPUT", &log)]),
            false => run_shimmed(&w, "dr", &args, &[("HSM_SYNC_SHIM_LOG", &log)]),
        };
        assert_eq!(out.code, 1, "{out:?}");
        assert!(out.stderr.contains("cluster `dr`"), "{}", out.stderr);
        assert!(
            out.stderr.contains("wrong PIN") || out.stderr.contains("PIN"),
            "{}",
            out.stderr
        );
        assert!(!out.stderr.contains("not-the-pin"), "the PIN is never printed");
        let spy_log = w.read(&log);
        // The spy heads every call with "N: C_Name", the shim starts its line with the
        // name: primary logs in once, dr is tried once and refused, nothing tries again.
        let logins = spy_log
            .lines()
            .filter(|l| l.ends_with(": C_Login") || l.starts_with("C_Login "))
            .count();
        let wrong = spy_log.matches("CKR_PIN_INCORRECT").count();
        assert_eq!(
            (logins, wrong),
            (if both && spied { 2 } else { 1 }, 1),
            "{cmd}: one login per token, one wrong PIN:\n{spy_log}"
        );
    }
}

#[test]
fn transient_errors_are_retried_and_fatal_ones_fail_only_their_job() {
    let shim = shim().display().to_string();
    let w = pair().key("primary", "01", "k", &["--count", "4"]);
    w.write("plan.yaml", &plan_via(&shim, false, Sel::label("k-*")));

    // The 2nd unwrap fails once with CKR_DEVICE_ERROR: retried, every key lands once.
    let t = run_shimmed(
        &w,
        "dr",
        &["apply", "plan.yaml", "--jobs", "1", "--report", "transient.json"],
        &[
            ("HSM_SYNC_SHIM_FAIL", "C_UnwrapKey:2:CKR_DEVICE_ERROR"),
            ("HSM_SYNC_SHIM_LOG", "t.log"),
        ],
    );
    assert_eq!(t.code, 0, "{t:?}");
    let r = w.report("transient.json");
    assert_eq!(r.summary.create, 4);
    assert_eq!(r.summary.failed, 0);
    let retried: Vec<&JobRecord> = r.jobs.iter().filter(|j| j.attempts == Some(2)).collect();
    assert_eq!(retried.len(), 1, "exactly the faulted job was retried: {r:#?}");
    assert_eq!(
        calls(&w, "t.log", "C_UnwrapKey")
            .iter()
            .filter(|l| l.contains("injected"))
            .count(),
        1
    );
    assert_eq!(w.count("dr"), 4, "no duplicate from the retry");

    // A fatal error on one key fails that job only; the others proceed; exit 3. (Unwrap
    // #1 is the lineage proof, #2 the first new key.)
    w.fixture(&["keygen", "primary", "--id", "02", "--label", "k2", "--count", "3"]);
    w.write("plan.yaml", &plan_via(&shim, false, Sel::label("k*")));
    let f = run_shimmed(
        &w,
        "dr",
        &["apply", "plan.yaml", "--jobs", "1", "--report", "fatal.json"],
        &[("HSM_SYNC_SHIM_FAIL", "C_UnwrapKey:3:CKR_FUNCTION_FAILED")],
    );
    assert_eq!(f.code, 3, "{f:?}");
    let r = w.report("fatal.json");
    assert_eq!(r.summary.failed, 1, "{r:#?}");
    assert_eq!(r.summary.create, 3);
    let failed = r
        .jobs
        .iter()
        .find(|j| j.status == Status::Failed)
        .expect("a failed job");
    assert!(
        failed.error.as_deref().unwrap().contains("CKR_FUNCTION_FAILED"),
        "{failed:?}"
    );
    assert!(failed.attempts.is_none(), "a fatal error is not retried: {failed:?}");
    assert!(f.stderr.contains("failed:"), "{}", f.stderr);
    assert_eq!(w.count("dr"), 6);

    // The rerun converges without the fault.
    let again = run_shimmed(&w, "dr", &["apply", "plan.yaml", "--report", "again.json"], &[]);
    assert_eq!(again.code, 0, "{again:?}");
    let r = w.report("again.json");
    assert_eq!((r.summary.create, r.summary.unchanged), (1, 6));
    assert_eq!(w.count("dr"), 7);
}

/// A first sync wraps each new key once on the source (its copy job's wrap is its
/// fingerprint), not twice (issue 6: a round trip per key on a network HSM). Once the
/// target holds most keys, they are all fingerprinted while the target is read, and a new
/// key is wrapped again by its job. Either way keys a target holds are compared, and the
/// report shows the fingerprints `plan` showed. The shim on the source counts the wraps
/// against `plan`'s, which fingerprints every key once.
#[test]
fn apply_wraps_each_new_key_once_on_the_source() {
    let shim = shim().display().to_string();
    let w = pair()
        .key("primary", "01", "k-a", &[])
        .key("primary", "02", "k-b", &[])
        .key("primary", "03", "k-c", &[]);
    // Only the source goes through the shim.
    let plan = Plan::two_clusters().select(Sel::label("k-*")).module("primary", &shim);
    w.write("plan.yaml", &plan.yaml());
    let wraps = |log: &str| calls(&w, log, "C_WrapKey").len();
    let fingerprints = |r: &Report| -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = r
            .jobs
            .iter()
            .map(|j| (j.key.id.clone(), j.fingerprint.clone().unwrap_or_default()))
            .collect();
        out.sort();
        out
    };

    for (round, new_keys, held, extra_wraps) in [(1, 3, 0, 0), (2, 1, 3, 1)] {
        if round == 2 {
            w.fixture(&["keygen", "primary", "--id", "04", "--label", "k-d"]);
        }
        let plan_log = format!("plan-{round}.log");
        let planned = run_shimmed(
            &w,
            "primary",
            &["plan", "plan.yaml", "--format", "json", "--detailed-exitcode"],
            &[("HSM_SYNC_SHIM_LOG", &plan_log)],
        );
        assert_eq!(planned.code, 2, "changes pending: {planned:?}");
        let apply_log = format!("apply-{round}.log");
        let applied = run_shimmed(
            &w,
            "primary",
            &["apply", "plan.yaml", "--quiet", "--report", "report.json"],
            &[("HSM_SYNC_SHIM_LOG", &apply_log)],
        );
        assert_eq!(applied.code, 0, "{applied:?}");
        let report = w.report("report.json");
        assert_eq!(report.summary.create, new_keys, "{report:?}");
        assert_eq!(report.summary.unchanged, held, "{report:?}");
        // Every key has the fingerprint the plan showed: the job's own for new keys.
        let shown = fingerprints(&planned.report());
        assert_eq!(fingerprints(&report), shown);
        assert!(shown.iter().all(|(_, f)| f.len() == 16), "{shown:?}");
        assert_eq!(
            wraps(&apply_log),
            wraps(&plan_log) + extra_wraps,
            "round {round}: apply wrapped {} times, plan {}",
            wraps(&apply_log),
            wraps(&plan_log)
        );
    }
}

/// The template ladder (issue 14 item 3): a token that refuses an attribute of the unwrap
/// template gets the next rung (here without `CKA_MODIFIABLE`), kept for the run and said
/// in the job's note; one that refuses every rung fails the job with its CKR code, and
/// nothing that protects the key is ever left out.
#[test]
fn a_refused_template_attribute_is_dropped_once_and_said_never_a_protective_one() {
    let shim = shim().display().to_string();
    let w = pair().key("primary", "01", "k", &["--count", "2"]);
    w.write("plan.yaml", &plan_via(&shim, false, Sel::label("k-*")));
    // Unwrap #1 is the lineage proof; #2 the first copy, refused once.
    let out = run_shimmed(
        &w,
        "dr",
        &["apply", "plan.yaml", "--jobs", "1", "--report", "r.json"],
        &[
            ("HSM_SYNC_SHIM_FAIL", "C_UnwrapKey:2:CKR_ATTRIBUTE_READ_ONLY"),
            ("HSM_SYNC_SHIM_LOG", "ladder.log"),
        ],
    );
    assert_eq!(out.code, 0, "{out:?}");
    let r = w.report("r.json");
    assert_eq!(r.summary.create, 2);
    for j in &r.jobs {
        assert!(
            j.note.as_deref().unwrap_or("").contains("refused CKA_MODIFIABLE"),
            "every copy of the run says what it does not keep: {j:?}"
        );
    }
    assert_eq!(
        calls(&w, "ladder.log", "C_UnwrapKey").len(),
        4,
        "one retry, then learned: no more refusals"
    );
    assert_eq!(w.count("dr"), 2);

    // Refused on every rung: the job fails with the token's code, nothing is copied.
    w.fixture(&["keygen", "primary", "--id", "02", "--label", "k-x"]);
    let out = run_shimmed(
        &w,
        "dr",
        &["apply", "plan.yaml", "--jobs", "1", "--report", "r2.json"],
        &[("HSM_SYNC_SHIM_FAIL", "C_UnwrapKey:2+:CKR_TEMPLATE_INCONSISTENT")],
    );
    assert_eq!(out.code, 3, "{out:?}");
    let r = w.report("r2.json");
    let failed: Vec<_> = r.jobs.iter().filter(|j| j.status == Status::Failed).collect();
    assert_eq!(failed.len(), 1, "{r:#?}");
    assert!(
        failed[0]
            .error
            .as_deref()
            .unwrap_or("")
            .contains("CKR_TEMPLATE_INCONSISTENT"),
        "{:?}",
        failed[0]
    );
    assert_eq!(w.count("dr"), 2, "nothing copied looser");
}

/// A refusal the ladder's rungs do not cure (a value the token dislikes, not an attribute
/// it refuses) fails its own job and teaches the run nothing: the next copies carry the
/// full template, with no note of a dropped attribute.
#[test]
fn a_refusal_no_rung_cures_is_not_learned_for_the_run() {
    let shim = shim().display().to_string();
    let w = pair().key("primary", "01", "k", &["--count", "3"]);
    w.write("plan.yaml", &plan_via(&shim, false, Sel::label("k-*")));
    // Unwrap #1 is the lineage proof; #2 the first copy, #3 its retry without
    // CKA_MODIFIABLE: both refused, so that copy fails.
    let out = run_shimmed(
        &w,
        "dr",
        &["apply", "plan.yaml", "--jobs", "1", "--report", "r.json"],
        &[
            (
                "HSM_SYNC_SHIM_FAIL",
                "C_UnwrapKey:2:CKR_ATTRIBUTE_VALUE_INVALID,C_UnwrapKey:3:CKR_ATTRIBUTE_VALUE_INVALID",
            ),
            ("HSM_SYNC_SHIM_LOG", "ladder.log"),
        ],
    );
    assert_eq!(out.code, 3, "{out:?}");
    let r = w.report("r.json");
    let failed: Vec<_> = r.jobs.iter().filter(|j| j.status == Status::Failed).collect();
    assert_eq!(failed.len(), 1, "{r:#?}");
    assert!(
        failed[0]
            .error
            .as_deref()
            .unwrap_or("")
            .contains("CKR_ATTRIBUTE_VALUE_INVALID"),
        "{:?}",
        failed[0]
    );
    let ok: Vec<_> = r.jobs.iter().filter(|j| j.status == Status::Ok).collect();
    assert_eq!(ok.len(), 2, "{r:#?}");
    for j in ok {
        assert!(
            !j.note.as_deref().unwrap_or("").contains("refused CKA_MODIFIABLE"),
            "a rung that did not help is not kept: {j:?}"
        );
    }
    assert_eq!(
        calls(&w, "ladder.log", "C_UnwrapKey").len(),
        5,
        "the proof, the failed copy's two tries, one try per other copy"
    );
    assert_eq!(w.count("dr"), 2);
}
