//! SIGINT and SIGTERM mid-apply (CONTRACT.md §2, issue 16 item 1): CI cancels jobs with
//! SIGTERM. The first signal stops new jobs, lets the ones in flight finish and verify,
//! clears the journal, writes the report (`interrupted`, the rest `skipped`) and exits
//! 130/143; no half-made object is left, and the rerun converges.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::world::{assert_schema, pair, Output, Plan, Sel, Status, World};

const KEYS: usize = 3000;

/// A pseudo-random delay from the clock, printed in every assertion to replay a failure.
fn jitter_ms(lo: u64, hi: u64) -> u64 {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::from(d.subsec_nanos()));
    lo + n.wrapping_mul(6364136223846793005).rotate_left(17) % (hi - lo)
}

/// Runs `apply` and sends `signal` after `after`; returns what it printed.
fn apply_then_signal(w: &World, signal: &str, after: Duration) -> Output {
    let child = w
        .command(w.path(), &["apply", "plan.yaml", "--report", "report.json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("hsm-sync starts");
    std::thread::sleep(after);
    let _ = Command::new("kill").args([signal, &child.id().to_string()]).status();
    let out = child.wait_with_output().expect("hsm-sync ends");
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Every object on `token` as (class, id, label), from the fixture.
fn objects(w: &World, token: &str) -> Vec<(String, String, String)> {
    w.fixture(&["objects", token])
        .lines()
        .map(|l| {
            let mut parts = l.splitn(3, ' ');
            let class = parts.next().unwrap_or_default().to_string();
            let id = parts.next().unwrap_or_default().to_string();
            let label = parts.next().unwrap_or_default().to_string();
            (class, id, label)
        })
        .collect()
}

/// What must hold after any stop: no object without id and label, no journal left.
fn assert_clean(w: &World, when: &str) {
    let objs = objects(w, "dr");
    let anonymous = objs
        .iter()
        .filter(|(_, id, label)| id == "-" && label.is_empty())
        .count();
    assert_eq!(anonymous, 0, "{when}: objects with neither id nor label on dr");
    let journals = objs
        .iter()
        .filter(|(_, _, label)| label.starts_with("hsm-sync/in-flight"))
        .count();
    assert_eq!(journals, 0, "{when}: the in-flight journal was left on dr");
    if crate::world::backend() == "file" {
        let left = std::fs::read_dir(w.path().join("state/journals")).map_or(0, |d| d.count());
        assert_eq!(left, 0, "{when}: the in-flight journal was left in the state directory");
    }
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (class, id, _) in &objs {
        if id != "-" {
            *seen.entry(id.as_str()).or_default() += usize::from(class.contains("SECRET"));
        }
    }
    assert!(seen.values().all(|n| *n <= 1), "{when}: a key was copied twice");
}

#[test]
fn sigint_and_sigterm_stop_apply_cleanly_and_the_rerun_converges() {
    let w = pair()
        .key("primary", "a1", "bulk", &["--count", &KEYS.to_string()])
        .plan(&Plan::two_clusters().select(Sel::label("bulk-*")));
    let mut moments = Vec::new();
    for (signal, code) in [("-INT", 130), ("-TERM", 143)] {
        let _ = std::fs::remove_file(w.path().join("report.json"));
        let at = jitter_ms(400, 2500);
        moments.push((signal, at));
        let out = apply_then_signal(&w, signal, Duration::from_millis(at));
        let when = format!("{signal} after {at} ms");
        assert!(!out.stderr.contains("panicked"), "{when}: {out:?}");
        if out.code == 0 {
            // The run finished before the signal: nothing to stop, and nothing left to do.
            eprintln!("{when}: apply had finished");
            assert_clean(&w, &when);
            continue;
        }
        assert_eq!(out.code, code, "{when}: {out:?}");
        let text = w.read("report.json");
        let json: serde_json::Value = serde_json::from_str(&text).expect("the report is JSON");
        assert_schema("report", &json, "an interrupted report");
        let report = w.report("report.json");
        assert!(report.interrupted, "{when}");
        let ok = report.jobs.iter().filter(|j| j.status == Status::Ok).count();
        let skipped = report.jobs.iter().filter(|j| j.status == Status::Skipped).count();
        eprintln!("{when}: {ok} copied, {skipped} skipped");
        assert_eq!(
            ok + skipped,
            report.jobs.len(),
            "{when}: every job finished or was skipped"
        );
        assert!(skipped > 0, "{when}: a stopped run skips what it did not start");
        assert!(out.stdout.contains("Apply:"), "{when}: the summary is printed: {out:?}");
        assert!(out.stderr.contains("interrupted by"), "{when}: {out:?}");
        assert_clean(&w, &when);
    }
    let rerun = w.run(&["apply", "plan.yaml"]);
    assert_eq!(rerun.code, 0, "rerun after {moments:?}: {rerun:?}");
    assert_eq!(w.count("dr"), KEYS, "exactly every key once, after {moments:?}");
    let plan = w.run(&["plan", "plan.yaml", "--detailed-exitcode"]);
    assert_eq!(plan.code, 0, "in sync after {moments:?}: {plan:?}");
    assert_clean(&w, "after the rerun");
}
