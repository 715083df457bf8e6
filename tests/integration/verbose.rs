//! `-v` (a line per pipeline stage with its duration) and `-vv` (a line per PKCS#11 call:
//! function, CKR code, duration, never an argument), on stderr only (issue 16).

use crate::world::{pair, Plan, Sel, World};

/// The stages an `apply` of a plan file goes through, in order.
const APPLY_STAGES: [&str; 8] = [
    "connect",
    "lock",
    "login",
    "lineage",
    "inventory",
    "diff",
    "execute",
    "record/notify",
];

/// `elapsed=12.345ms`: a duration in milliseconds, three decimals.
fn is_elapsed(field: &str) -> bool {
    field
        .strip_prefix("elapsed=")
        .and_then(|f| f.strip_suffix("ms"))
        .and_then(|ms| ms.split_once('.'))
        .is_some_and(|(whole, frac)| {
            !whole.is_empty()
                && whole.bytes().all(|b| b.is_ascii_digit())
                && frac.len() == 3
                && frac.bytes().all(|b| b.is_ascii_digit())
        })
}

/// The stage of a `stage: NAME elapsed=…ms` line, if it is one.
fn stage_of(line: &str) -> Option<&str> {
    let rest = line.strip_prefix("stage: ")?;
    let (name, elapsed) = rest.split_once(' ')?;
    is_elapsed(elapsed).then_some(name)
}

/// The function and CKR code of a `pkcs11: C_Name rv=CKR_CODE elapsed=…ms` line, if it
/// is exactly that: the format leaves no room for an argument.
fn call_of(line: &str) -> Option<(&str, &str)> {
    let mut words = line.strip_prefix("pkcs11: ")?.split(' ');
    let (function, rv, elapsed) = (words.next()?, words.next()?, words.next()?);
    let rv = rv.strip_prefix("rv=")?;
    let well_formed = words.next().is_none()
        && function.starts_with("C_")
        && function[2..].bytes().all(|b| b.is_ascii_alphabetic())
        && rv.starts_with("CKR_")
        && rv
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        && is_elapsed(elapsed);
    well_formed.then_some((function, rv))
}

fn is_log_line(line: &str) -> bool {
    line.starts_with("stage:") || line.starts_with("pkcs11:")
}

/// The `(N ms)` of the apply summary as `(_ ms)`: the one part of stdout that differs
/// between two runs.
fn without_ms(stdout: &str) -> String {
    let mut out = String::new();
    for part in stdout.split_inclusive(" ms)") {
        match part.rfind('(') {
            Some(i) if part.ends_with(" ms)") => {
                out.push_str(&part[..i]);
                out.push_str("(_ ms)");
            }
            _ => out.push_str(part),
        }
    }
    out
}

fn two_keys() -> World {
    pair()
        .key("primary", "a1", "pay", &["--count", "2"])
        .plan(&Plan::two_clusters().select(Sel::label("pay-*")))
}

#[test]
fn minus_v_prints_each_stage_and_its_duration_on_stderr_and_leaves_stdout_alone() {
    let quiet = two_keys();
    let plain = quiet.run(&["apply", "plan.yaml"]);
    assert_eq!(plain.code, 0, "{plain:?}");

    let w = two_keys();
    let v = w.run(&["-v", "apply", "plan.yaml", "--report", "report.json"]);
    assert_eq!(v.code, 0, "{v:?}");
    let stages: Vec<&str> = v.stderr.lines().filter_map(stage_of).collect();
    let mut expected = APPLY_STAGES.to_vec();
    expected.push("report");
    assert_eq!(stages, expected, "stderr:\n{}", v.stderr);
    assert!(
        v.stderr.lines().all(|l| stage_of(l).is_some()),
        "-v prints stage lines only (no PKCS#11 calls):\n{}",
        v.stderr
    );
    // stdout is what it is without -v: the summary, no log line.
    assert!(v.stdout.starts_with("Apply: 2 created"), "{}", v.stdout);
    assert_eq!(
        without_ms(&v.stdout),
        without_ms(&plain.stdout).replace('\n', "; report: report.json\n")
    );
    assert!(!v.stdout.lines().any(is_log_line), "{}", v.stdout);

    // JSON on stdout stays JSON: the log never goes there.
    let json = w.run(&["-v", "plan", "plan.yaml", "--format", "json"]);
    assert_eq!(json.code, 0, "{json:?}");
    assert_eq!(json.report().summary.unchanged, 2);
    let stages: Vec<&str> = json.stderr.lines().filter_map(stage_of).collect();
    assert_eq!(
        stages,
        ["connect", "login", "lineage", "inventory", "diff"],
        "{}",
        json.stderr
    );
    let to_stdout = w.run(&["-v", "apply", "plan.yaml", "--report", "-"]);
    assert_eq!(to_stdout.code, 0, "{to_stdout:?}");
    assert_eq!(to_stdout.json()["command"], "apply");
    assert!(to_stdout.stderr.lines().any(|l| stage_of(l) == Some("report")));
}

#[test]
fn minus_vv_names_every_pkcs11_call_with_its_ckr_code_and_never_an_argument() {
    let domain = "8f3a1c5e7b9d2f4061a3c5e7092b4d6f8a1c3e5f7092b4d6e8fa1c3e5d7b9f21";
    let aes = "5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b";
    let id = "c0ffee5eed0badf00d";
    let w = World::new().tokens(&["primary", "dr"]);
    w.fixture(&["domain-key", "--value", domain, "primary", "dr"]);
    w.fixture(&["import", "primary", "--id", id, "--label", "vv-aes", "--value", aes]);
    let w = w.plan(&Plan::two_clusters().select(Sel::id(id)));

    let inventory = w.run(&["-vv", "inventory", "plan.yaml", "primary"]);
    assert_eq!(inventory.code, 0, "{inventory:?}");
    let apply = w.run(&["-vv", "apply", "plan.yaml"]);
    assert_eq!(apply.code, 0, "{apply:?}");
    assert!(apply.stdout.starts_with("Apply: 1 created"), "{}", apply.stdout);

    for (what, out, wanted) in [
        (
            "inventory",
            &inventory,
            &["C_Login", "C_FindObjects", "C_GetAttributeValue", "C_WrapKey"][..],
        ),
        (
            "apply",
            &apply,
            &["C_Login", "C_WrapKey", "C_UnwrapKey", "C_CreateObject"][..],
        ),
    ] {
        let calls: Vec<(&str, &str)> = out.stderr.lines().filter_map(call_of).collect();
        for f in wanted {
            assert!(
                calls.contains(&(f, "CKR_OK")),
                "{what}: no `pkcs11: {f} rv=CKR_OK elapsed=…ms` line:\n{}",
                out.stderr
            );
        }
        // -vv is -v and more: the stages are there too; nothing else is.
        assert!(
            out.stderr.lines().any(|l| stage_of(l) == Some("login")),
            "{}",
            out.stderr
        );
        for line in out.stderr.lines() {
            assert!(
                stage_of(line).is_some() || call_of(line).is_some(),
                "{what}: a line that is neither a stage nor a call: {line:?}"
            );
        }
        assert!(
            !out.stdout.lines().any(is_log_line),
            "{what}: log on stdout:\n{}",
            out.stdout
        );
        for secret in [
            "primary-user-pin-0000",
            "dr-user-pin-0000",
            domain,
            &domain.to_uppercase(),
            aes,
            &aes.to_uppercase(),
            &aes[16..32],
            id,
            &id.to_uppercase(),
        ] {
            assert!(
                !out.stderr.contains(secret),
                "{what}: `{secret}` in stderr:\n{}",
                out.stderr
            );
        }
    }
}

#[test]
fn without_v_no_log_line_is_printed_whatever_rust_log_says() {
    let w = two_keys();
    for args in [
        &["apply", "plan.yaml"][..],
        &["inventory", "plan.yaml", "dr"],
        &["plan", "plan.yaml", "--format", "json"],
    ] {
        let out = w.run_env(args, &[("RUST_LOG", "trace")]);
        assert_eq!(out.code, 0, "{args:?}: {out:?}");
        assert!(
            !out.stderr.lines().chain(out.stdout.lines()).any(is_log_line),
            "{args:?} printed log lines without -v:\n{}{}",
            out.stdout,
            out.stderr
        );
    }
}
