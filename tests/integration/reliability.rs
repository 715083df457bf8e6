//! Kills, races and leaks: what an unattended pipeline does to hsm-sync, on SoftHSM.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;

use crate::world::{pair, shim, Output, Pin, Plan, Sel, World};

/// Starts `hsm-sync args…` in the world without waiting.
fn spawn(w: &World, args: &[&str], env: &[(&str, &str)]) -> std::process::Child {
    w.command(w.path(), args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("hsm-sync starts")
}

fn finish(child: std::process::Child) -> Output {
    let out = child.wait_with_output().expect("hsm-sync ends");
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Keys on a cluster by identity, as `inventory` sees them: duplicates show as counts > 1.
fn identities(w: &World, cluster: &str) -> HashMap<String, usize> {
    inventory(w, cluster).0
}

/// Identities with their counts, and how many copies cannot be fingerprinted (a copy
/// whose value a killed `C_UnwrapKey` never stored).
fn inventory(w: &World, cluster: &str) -> (HashMap<String, usize>, usize) {
    let inv = w.run(&["inventory", "plan.yaml", cluster, "--format", "json"]);
    assert_eq!(inv.code, 0, "{inv:?}");
    let (mut out, mut unreadable) = (HashMap::new(), 0);
    for k in inv.json()["keys"].as_array().expect("keys") {
        *out.entry(format!("{}/{}/{}", k["class"], k["id"], k["label"]))
            .or_insert(0) += 1;
        unreadable += usize::from(k["fingerprint"].is_null());
    }
    (out, unreadable)
}

/// A pseudo-random number from the clock: enough to vary kill moments between runs,
/// and printed in every assertion so a failure can be replayed.
fn jitter(range: u64) -> u64 {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64);
    n.wrapping_mul(6364136223846793005).rotate_left(17) % range
}

#[test]
fn killed_mid_apply_then_rerun_ends_with_exactly_the_expected_keys() {
    const KEYS: usize = 1500;
    let w = pair()
        .key("primary", "a1", "k", &["--count", "1000"])
        .key("primary", "b1", "mac", &["--generic", "--count", "500"])
        // The targets are reached through the shim, whose call log shows how far a run
        // got: each round is killed after a random number of unwraps, so every kill lands
        // mid-copy however slow the machine is.
        .plan(
            &Plan::two_clusters()
                .select(Sel::label("k-*"))
                .select(Sel::label("mac-*"))
                .module_all(&shim()),
        );
    let (mut moments, mut copied, mut broken) = (Vec::new(), Vec::new(), 0);
    for round in 0..4 {
        let log = format!("round-{round}.log");
        let child = spawn(
            &w,
            &["apply", "plan.yaml", "--quiet", "--jobs", "2"],
            &[("HSM_SYNC_SHIM_LOG", &log)],
        );
        let at = 1 + jitter(250) as usize;
        moments.push(at);
        let waiting = Instant::now();
        while std::fs::read_to_string(w.path().join(&log))
            .unwrap_or_default()
            .matches("C_UnwrapKey")
            .count()
            < at + 1
        {
            assert!(
                waiting.elapsed() < Duration::from_secs(120),
                "round {round} never reached unwrap {at}"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        // SIGKILL: no destructor, no unwinding, no chance to tidy up.
        let pid = child.id().to_string();
        let _ = Command::new("kill").args(["-9", &pid]).status();
        let out = finish(child);
        assert!(
            out.code == -1 || out.code == 0,
            "round {round}: killed after unwrap {at}: {out:?}"
        );
        let (now, unreadable) = inventory(&w, "dr");
        assert!(
            now.values().all(|&n| n == 1),
            "duplicates after a kill after unwraps {moments:?}: {now:?}"
        );
        copied.push(now.len());
        broken = unreadable;
    }
    eprintln!("killed after unwraps {moments:?} with {copied:?} keys on dr, {broken} half-made");
    assert!(
        copied.iter().any(|&n| n > 0 && n < KEYS),
        "at least one kill landed mid-copy: unwraps {moments:?}, {copied:?} keys"
    );
    let rerun = w.run(&["apply", "plan.yaml", "--report", "rerun.json"]);
    assert_eq!(rerun.code, 0, "rerun after kills after unwraps {moments:?}: {rerun:?}");
    let report = w.report("rerun.json");
    let s = &report.summary;
    assert_eq!(s.create + s.unchanged, KEYS, "every key is created or unchanged: {s:?}");
    assert_eq!((s.failed, s.conflict), (0, 0), "{s:?}");
    let repairs = report
        .jobs
        .iter()
        .filter(|j| j.reason == Some(hsm_sync::domain::reason::Reason::Repair))
        .count();
    assert_eq!(repairs, broken, "every half-made copy, and only those, is repaired");
    let keys = identities(&w, "dr");
    assert_eq!(keys.len(), KEYS, "kills after unwraps {moments:?}");
    assert!(keys.values().all(|&n| n == 1), "zero duplicates");
    let plan = w.run(&["plan", "plan.yaml", "--detailed-exitcode"]);
    assert_eq!(plan.code, 0, "converged: {plan:?}");
}

#[test]
fn two_applies_of_one_plan_never_duplicate_and_the_loser_says_why() {
    let plan = Plan::two_clusters().select(Sel::label("k-*"));
    let w = pair().key("primary", "a1", "k", &["--count", "300"]).plan(&plan);
    // On the file and postgres backends each run is "another machine" (issue 15): its
    // own lock directory and working directory, the plan by its absolute path; only the
    // state backend is shared. On the token backend the lock is this machine's.
    let machines = crate::world::backend() != "token";
    let machine = |n: &str| {
        let dir = w.path().join(format!("machine-{n}"));
        std::fs::create_dir_all(dir.join("locks")).expect("machine dir");
        dir
    };
    let plan_file = |name: &str| w.path().join(name).display().to_string();
    let on = |m: &std::path::Path, args: &[&str], env: &[(&str, &str)]| {
        let mut cmd = w.command(if machines { m } else { w.path() }, args);
        if machines {
            cmd.env("HSM_SYNC_LOCK_DIR", m.join("locks"));
        }
        cmd.envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("hsm-sync starts")
    };
    let (ma, mb) = (machine("a"), machine("b"));
    let main_plan = plan_file("plan.yaml");
    // Started together: whichever order the lock gives, no key lands twice.
    let a = on(&ma, &["apply", &main_plan, "--quiet"], &[]);
    let b = on(&mb, &["apply", &main_plan, "--quiet"], &[]);
    let (a, b) = (finish(a), finish(b));
    for o in [&a, &b] {
        assert!(o.code == 0 || o.code == 1, "{o:?}");
        if o.code == 1 {
            assert!(
                o.stderr.contains("being changed by another hsm-sync run"),
                "{}",
                o.stderr
            );
            assert!(o.stderr.contains("nothing was changed"), "{}", o.stderr);
        }
    }
    assert!(a.code == 0 || b.code == 0, "one of them ran: {a:?} {b:?}");
    let keys = identities(&w, "dr");
    assert_eq!(keys.len(), 300);
    assert!(keys.values().all(|&n| n == 1), "zero duplicates");

    // A run that is surely in progress (1 ms per PKCS#11 call through the shim) makes a
    // second one refuse at once, naming the holder; the first finishes undisturbed.
    w.fixture(&["keygen", "primary", "--id", "c1", "--label", "k-late", "--count", "200"]);
    w.write(
        "slow.yaml",
        &format!("{}{}", plan.module_all(&shim()).yaml(), w.state_block()),
    );
    let slow_plan = plan_file("slow.yaml");
    let (slow_log, second_log) = (plan_file("slow.log"), plan_file("second.log"));
    let slow = on(
        &ma,
        &["apply", &slow_plan, "--quiet"],
        &[("HSM_SYNC_SHIM_LATENCY_US", "2000"), ("HSM_SYNC_SHIM_LOG", &slow_log)],
    );
    // The lock is taken before the inventories are read: once the shim logs a key
    // being wrapped for its fingerprint, the slow run holds it.
    let waiting = Instant::now();
    while !std::fs::read_to_string(w.path().join("slow.log"))
        .unwrap_or_default()
        .contains("C_WrapKey")
    {
        assert!(
            waiting.elapsed() < Duration::from_secs(60),
            "the slow run never reached its inventory"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The second run goes through the shim too (no latency), for its call log.
    let second = finish(on(&mb, &["apply", &slow_plan], &[("HSM_SYNC_SHIM_LOG", &second_log)]));
    let mut slow = slow;
    let still_running = slow.try_wait().expect("try_wait").is_none();
    let slow = finish(slow);
    assert_eq!(second.code, 1, "{second:?}");
    assert!(
        second
            .stderr
            .contains("cluster `dr` is being changed by another hsm-sync run (apply, pid"),
        "{}",
        second.stderr
    );
    assert!(
        still_running,
        "the second run was refused while the first still ran, not after waiting for it"
    );
    // Refused before logging in: a busy cluster costs no login attempt.
    let second_calls = std::fs::read_to_string(w.path().join("second.log")).unwrap_or_default();
    assert!(second_calls.contains("C_GetTokenInfo"), "the shim saw the second run");
    assert!(!second_calls.contains("C_Login"), "{second_calls}");
    assert_eq!(slow.code, 0, "{slow:?}");
    assert_eq!(identities(&w, "dr").len(), 500);
}

#[test]
fn no_pin_and_no_key_material_reaches_any_output() {
    let domain = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    let aes = "4b45592d4d4154455249414c2d4145532d3235362d62697473212121212121ff";
    let mac = "6d61632d6b65792d6d6174657269616c2d7468697274792d74776f2d62797465";
    let w = World::new().tokens(&["primary", "dr"]);
    w.fixture(&["domain-key", "--value", domain, "primary", "dr"]);
    w.fixture(&["import", "primary", "--id", "01", "--label", "aes", "--value", aes]);
    w.fixture(&[
        "import",
        "primary",
        "--id",
        "02",
        "--label",
        "mac",
        "--value",
        mac,
        "--generic",
    ]);
    let plan = Plan::two_clusters().select(Sel::id("01")).select(Sel::id("02"));
    let w = w.plan(&plan);

    let mut outputs: Vec<(String, String)> = Vec::new();
    let mut record = |what: &str, o: Output| {
        outputs.push((format!("{what} stdout"), o.stdout));
        outputs.push((format!("{what} stderr"), o.stderr));
    };
    for args in [
        vec!["validate", "plan.yaml", "--online"],
        vec!["plan", "plan.yaml"],
        vec!["plan", "plan.yaml", "--format", "json"],
        vec!["plan", "plan.yaml", "--format", "markdown", "--out", "saved.json"],
        vec!["apply", "saved.json", "--report", "report.json", "--junit", "junit.xml"],
        vec!["inventory", "plan.yaml", "primary"],
        vec!["inventory", "plan.yaml", "dr", "--format", "json"],
        vec!["--diagnostics", "json", "plan", "plan.yaml", "--format", "json"],
    ] {
        let o = w.run_env(&args, &[("RUST_LOG", "trace")]);
        assert!(o.code == 0 || o.code == 2, "{args:?}: {o:?}");
        record(&args.join(" "), o);
    }
    // sync-key takes a handle as `inventory` prints it just before (SoftHSM numbers
    // objects per process, so handles hold only while the token is unchanged).
    w.fixture(&[
        "import",
        "primary",
        "--id",
        "03",
        "--label",
        "late",
        "--value",
        &aes.replace("ff", "ee"),
    ]);
    let inv = w.run(&["inventory", "plan.yaml", "primary", "--format", "json"]);
    let handle = inv.json()["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["label"] == "late")
        .expect("the late key")["handle"]
        .to_string();
    let o = w.run(&["sync-key", "plan.yaml", "--source", "primary", &handle, "dr"]);
    assert_eq!(o.code, 0, "{o:?}");
    record("sync-key", o);
    // Failures print the most: a wrong PIN, and a plan that tries to hold a PIN inline.
    w.write("dr.pin", "wrong-pin-value\n");
    record("wrong pin", w.run(&["apply", "plan.yaml"]));
    w.write(
        "inline.yaml",
        &plan.pin("primary", Pin::Literal("primary-user-pin-0000".into())).yaml(),
    );
    record(
        "inline pin",
        w.run(&["--diagnostics", "json", "validate", "inline.yaml"]),
    );
    for f in ["saved.json", "report.json", "junit.xml"] {
        outputs.push((f.to_string(), w.read(f)));
    }

    let b64 = base64::engine::general_purpose::STANDARD;
    let kek = aes_kw::KekAes256::try_from(hex::decode(domain).unwrap().as_slice()).unwrap();
    let mut secrets: Vec<(String, String)> = vec![
        ("primary PIN".into(), "primary-user-pin-0000".into()),
        ("dr PIN".into(), "dr-user-pin-0000".into()),
        ("wrong PIN".into(), "wrong-pin-value".into()),
    ];
    let late = aes.replace("ff", "ee");
    for (name, value) in [
        ("domain key", domain),
        ("AES key", aes),
        ("HMAC key", mac),
        ("late AES key", &late),
    ] {
        let bytes = hex::decode(value).unwrap();
        let wrapped = kek.wrap_with_padding_vec(&bytes).unwrap();
        for (form, text) in [
            ("hex", value.to_string()),
            ("HEX", value.to_uppercase()),
            ("base64", b64.encode(&bytes)),
            ("raw", String::from_utf8_lossy(&bytes[..16]).into_owned()),
            ("wrapped hex", hex::encode(&wrapped)),
            ("wrapped base64", b64.encode(&wrapped)),
        ] {
            secrets.push((format!("{name} ({form})"), text));
        }
        // Any 8-byte window of the value in hex, in case of truncation.
        for i in (0..bytes.len() - 8).step_by(4) {
            secrets.push((format!("{name} (hex window {i})"), hex::encode(&bytes[i..i + 8])));
        }
    }
    assert!(
        outputs.iter().any(|(_, t)| t.contains("syncKey success")),
        "the runs did run"
    );
    for (where_, text) in &outputs {
        for (what, s) in &secrets {
            assert!(!text.contains(s.as_str()), "{what} leaked into {where_}:\n{text}");
        }
    }
}
