//! The child-process protocol and what a child runs. The orchestrator re-executes this
//! binary as `--child MODE KIND KEYS TARGETS STORE LATENCY_US THREADS STATE MAKE` (with
//! `HSM_SYNC_BENCH_SHIM`, `HSM_SYNC_BENCH_KRYOPTIC`, `HSM_SYNC_BENCH_KEEP` and
//! `HSM_SYNC_BENCH_RUN` in its environment); the child provisions its tokens, runs the raw loop, `apply` and `plan`,
//! and prints one `RESULT key=value…` line (and `timings …` lines with `BENCH_TIMINGS`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cryptoki::session::Session;
use hsm_sync::diff::Action;
use hsm_sync::report::Status;
use secrecy::SecretString;
use testkit::provision::{self, PairSpec, Provisioner, SecretSpec};
use zeroize::Zeroizing;

use crate::baseline::{raw_copy, raw_inventory, raw_inventory_and_wraps, source_objects, Ctx};
use crate::scenarios::{Backend, Kind, Make, Mode, Scenario};
use crate::{pin, DOMAIN};

/// The test-only latency shim, built in release mode.
pub(crate) fn shim() -> PathBuf {
    testkit::build::shim(true)
}

/// What a child reports: `key=value` pairs on one `RESULT` line.
#[derive(Default, Debug)]
pub(crate) struct Row {
    pub(crate) values: std::collections::HashMap<String, f64>,
}

impl Row {
    /// The value of `k`, if the child reported it.
    pub(crate) fn get(&self, k: &str) -> Option<f64> {
        self.values.get(k).copied()
    }
}

/// Runs scenario `s` in a child process and reads its `RESULT` line; `None` (and the
/// child's output on stderr) when it failed.
pub(crate) fn run_child(s: &Scenario, shim: Option<&Path>, keep: bool) -> Option<Row> {
    let exe = std::env::current_exe().expect("the bench knows its own path");
    let mut cmd = Command::new(exe);
    cmd.arg("--child").args(s.args());
    if let Some(p) = shim {
        cmd.env("HSM_SYNC_BENCH_SHIM", p);
    }
    if keep {
        cmd.env("HSM_SYNC_BENCH_KEEP", "1");
    }
    let out = cmd.output().expect("the bench re-executes itself");
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        eprintln!(
            "scenario {} failed ({}):\n{}{}",
            s.name(),
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    if std::env::var_os("BENCH_TIMINGS").is_some() {
        for l in stdout.lines().filter(|l| l.starts_with("timings ")) {
            println!("  {}: {l}", s.name());
        }
    }
    let line = stdout.lines().find(|l| l.starts_with("RESULT "))?;
    let mut row = Row::default();
    for kv in line.split_whitespace().skip(1) {
        if let Some((k, v)) = kv.split_once('=') {
            if let Ok(v) = v.parse() {
                row.values.insert(k.to_string(), v);
            }
        }
    }
    Some(row)
}

/// A `/proc/self/status` field (`VmRSS:`, `VmHWM:`) in MB.
fn rss_mb(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Resets the peak RSS to the current RSS (Linux: `5` to `/proc/self/clear_refs`).
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The bench plan: `src` → `targets`, keys `bench-*`, as a crypto-officer, its state in
/// `state` (the postgres URL in `HSM_SYNC_STATE_URL`, set by the child).
fn plan_yaml(module: &Path, targets: &[String], threads: usize, state: Backend) -> String {
    let cluster = |name: &str, from: Option<&str>| {
        let mut c = format!(
            "  {name}:\n    module: {}\n    token: {{ label: {name} }}\n    credentials: {{ role: crypto-officer, user: bench, pin: {{ file: {name}.pin }} }}\n",
            module.display()
        );
        match from {
            Some(f) => {
                let _ = writeln!(c, "    cloned_from: {f}");
            }
            None => c.push_str("    lineage: { domain_key: hsm-sync-domain }\n"),
        }
        c
    };
    let mut y = String::from("version: 1\nclusters:\n");
    y.push_str(&cluster("src", None));
    for t in targets {
        y.push_str(&cluster(t, Some("src")));
    }
    let _ = write!(
        y,
        "sync:\n  - name: bench\n    source: src\n    targets: [{}]\n    keys:\n      - label: \"bench-*\"\noptions:\n  parallelism: {threads}\n",
        targets.join(", ")
    );
    match state {
        Backend::Token => {}
        Backend::File => y.push_str("state:\n  backend: file\n  path: state\n"),
        Backend::Postgres => y.push_str("state:\n  backend: postgres\n  url_env: HSM_SYNC_STATE_URL\n"),
    }
    y
}

/// Runs an hsm-sync command in this process, exactly as the binary would (same entry
/// point, same stages, same output), and returns the report it wrote to `report`.
fn hsm_command(args: &[&str], report: &Path) -> hsm_sync::report::Report {
    hsm_command_to(args, report, None)
}

/// [`hsm_command`] with the command's stdout sent to `stdout`.
fn hsm_command_to(
    args: &[&str],
    report: &Path,
    stdout: Option<Box<dyn std::io::Write + Send>>,
) -> hsm_sync::report::Report {
    let argv = std::iter::once("hsm-sync")
        .chain(args.iter().copied())
        .map(std::ffi::OsString::from);
    let code = hsm_sync::run_with(argv, stdout);
    assert_eq!(code, std::process::ExitCode::SUCCESS, "hsm-sync {args:?} failed");
    let text = std::fs::read(report).expect("the command wrote its report");
    serde_json::from_slice(&text).expect("a valid report")
}

/// What one `apply` took.
struct Applied {
    /// The whole command.
    took: Duration,
    /// Its jobs (`timings.execute_ms`).
    exec: Duration,
    /// Writing the lifecycle records (`timings.notify_ms`; no resources, so no sends).
    records: Duration,
    /// Copies made and verified.
    ok: usize,
}

/// hsm-sync's `apply` command.
fn hsm_apply(plan: &Path, threads: usize) -> Applied {
    let report = plan.with_file_name("apply-report.json");
    let _ = std::fs::remove_file(&report);
    let start = Instant::now();
    let r = hsm_command(
        &[
            "apply",
            path_str(plan),
            "--quiet",
            "--jobs",
            &threads.to_string(),
            "--report",
            path_str(&report),
        ],
        &report,
    );
    let took = start.elapsed();
    if let Some(j) = r.jobs.iter().find(|j| j.status == Status::Failed) {
        panic!("a job failed: {:?}", j.error);
    }
    if std::env::var_os("BENCH_TIMINGS").is_some() {
        println!("timings apply {took:?}: {:?}", r.timings);
    }
    let ms =
        |f: fn(&hsm_sync::report::Timings) -> Option<u64>| r.timings.as_ref().and_then(f).map(Duration::from_millis);
    Applied {
        took,
        exec: ms(|t| t.execute_ms).unwrap_or(took),
        records: ms(|t| t.notify_ms).unwrap_or_default(),
        ok: r
            .jobs
            .iter()
            .filter(|j| j.action == Action::Create && j.status == Status::Ok)
            .count(),
    }
}

/// hsm-sync's `plan` command (its JSON report on stdout, as a pipeline reads it):
/// (time, unchanged or create items).
fn hsm_plan(plan: &Path) -> (Duration, usize) {
    let start = Instant::now();
    let r = hsm_plan_report(plan);
    let took = start.elapsed();
    if std::env::var_os("BENCH_TIMINGS").is_some() {
        println!("timings plan {took:?}: {:?}", r.timings);
    }
    (took, r.summary.unchanged + r.summary.create)
}

/// `plan --format json`, its stdout (the printer's, not the process's) written to a file
/// beside the plan.
fn hsm_plan_report(plan: &Path) -> hsm_sync::report::Report {
    let out = plan.with_file_name("plan-report.json");
    let file = std::fs::File::create(&out).expect("the plan output file");
    hsm_command_to(
        &["plan", path_str(plan), "--format", "json"],
        &out,
        Some(Box::new(file)),
    )
}

/// A path as the `&str` an argument list wants.
fn path_str(p: &Path) -> &str {
    p.to_str().expect("bench paths are UTF-8")
}

/// Generates the source keys with two sessions; returns the seconds taken.
fn generate(c: &Ctx, s: &Scenario) -> f64 {
    let start = Instant::now();
    let _anchor = c.login("src");
    let slot = c.slot("src");
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| {
                let sess = c.ctx.open_rw_session(slot).expect("a session");
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= s.keys {
                        break;
                    }
                    let id = (i as u32).to_be_bytes().to_vec();
                    let label = format!("bench-{i}");
                    match s.kind {
                        Kind::Aes => {
                            let spec = SecretSpec {
                                aes: true,
                                des3: false,
                                bytes: 32,
                                id,
                                label,
                                extractable: true,
                                private: true,
                                sensitive: true,
                            };
                            provision::generate_secret(&sess, &spec).expect("generate an AES key");
                        }
                        Kind::Rsa | Kind::Ec => {
                            let spec = PairSpec {
                                rsa_bits: (s.kind == Kind::Rsa).then_some(2048),
                                curve: "p256".into(),
                                id,
                                label,
                                extractable: true,
                            };
                            provision::generate_pair(&sess, &spec).expect("generate a pair");
                        }
                    }
                }
            });
        }
    });
    start.elapsed().as_secs_f64()
}

/// A child: runs the scenario its arguments name and prints its `RESULT` line.
pub(crate) fn child(args: &[String]) {
    let s = Scenario::parse(args);
    let dir = s.dir();
    // The row's token module, and the id its RFC 5649 mechanism has there.
    let (direct_module, kwp) = match s.make {
        Make::SoftHsm => (
            provision::softhsm_module().expect("SoftHSM2 is installed (apt-get install -y softhsm2)"),
            cryptoki_sys::CKM_AES_KEY_WRAP_PAD,
        ),
        Make::Kryoptic => (
            std::env::var_os("HSM_SYNC_BENCH_KRYOPTIC")
                .map(PathBuf::from)
                .expect("the orchestrator built Kryoptic"),
            cryptoki_sys::CKM_AES_KEY_WRAP_KWP,
        ),
    };
    let named = |prefix: &str| -> Vec<String> { (1..=s.targets).map(|i| format!("{prefix}{i}")).collect() };
    // Two rounds, each on targets of its own: `h*` and `g*` for apply, `r*` and `q*` for
    // the raw loop (the plan rows read `h*`).
    let targets = named("h");
    let again = named("g");
    let raw_targets = named("r");
    let raw_again = named("q");
    let mut out = String::from("RESULT");
    if s.mode != Mode::PlanRss {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("the token directory");
    }
    let conf = if s.mode == Mode::PlanRss {
        dir.join("softhsm2.conf")
    } else {
        provision::write_conf(&dir).expect("softhsm2.conf")
    };
    std::env::set_var("SOFTHSM2_CONF", &conf);
    let shim = std::env::var_os("HSM_SYNC_BENCH_SHIM").map(PathBuf::from);
    let module = if s.latency_us > 0 {
        std::env::set_var("HSM_SYNC_SHIM_TARGET", &direct_module);
        std::env::set_var("HSM_SYNC_SHIM_LATENCY_US", s.latency_us.to_string());
        shim.expect("the orchestrator built the shim")
    } else {
        direct_module.clone()
    };
    let plan = dir.join("plan.yaml");

    if s.mode == Mode::PlanRss {
        // SoftHSM's own share first: it loads every object of a token into the process
        // at login. A connection kept open while `plan` runs (same process, same
        // objects), so the difference is what hsm-sync itself adds.
        let loaded = hsm_sync::plan::load(&plan).expect("the bench plan is valid");
        let _held = hsm_sync::connect::connect(&loaded.plan).expect("connect");
        // SoftHSM reads an object's attributes from its file on first use and keeps
        // them: a raw inventory first, so that growth is counted as SoftHSM's too.
        let tokens: Vec<String> = std::iter::once("src".to_string())
            .chain(targets.iter().cloned())
            .collect();
        let _ = raw_inventory(&Ctx::new(&module, kwp), &tokens);
        let connect_rss = rss_mb("VmRSS:");
        reset_peak();
        let (t, n) = hsm_plan(&plan);
        assert_eq!(n, s.objects(), "plan sees every key");
        let _ = write!(
            out,
            " plan_s={:.3} plan_rss_mb={:.1} connect_rss_mb={connect_rss:.1}",
            t.as_secs_f64(),
            rss_mb("VmHWM:")
        );
        println!("{out}");
        return;
    }

    // Provisioning, directly on the module (never through the latency shim).
    let all: Vec<String> = std::iter::once("src".to_string())
        .chain(targets.iter().cloned())
        .chain(if s.mode == Mode::Sync {
            [&again, &raw_targets, &raw_again]
                .into_iter()
                .flatten()
                .cloned()
                .collect()
        } else {
            Vec::new()
        })
        .collect();
    if s.make == Make::Kryoptic {
        let slots: Vec<(&str, &[&str])> = all.iter().map(|t| (t.as_str(), &[][..])).collect();
        let conf = provision::write_kryoptic_conf(&dir, &slots).expect("kryoptic.toml");
        std::env::set_var("KRYOPTIC_CONF", conf);
    }
    let prov = Provisioner::new(&direct_module).expect("the token module loads");
    let mut value = Zeroizing::new(vec![0u8; 32]);
    getrandom::fill(&mut value).expect("random bytes");
    for t in &all {
        let pin_file = dir.join(format!("{t}.pin"));
        std::fs::write(&pin_file, pin(t)).expect("a PIN file");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&pin_file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        prov.init_token(
            t,
            &SecretString::from(format!("{t}-so-pin-0000")),
            &SecretString::from(pin(t)),
        )
        .expect("C_InitToken");
        let sess = prov.user_session(t, &SecretString::from(pin(t))).expect("login");
        provision::import_domain_key(&sess, DOMAIN, &value).expect("the domain key");
    }
    if s.state == Backend::Postgres {
        // A throwaway cluster of this child's own (testkit), a fresh database per row.
        let url = testkit::pg::server().database(&s.name());
        std::env::set_var("HSM_SYNC_STATE_URL", url);
    }
    std::fs::write(&plan, plan_yaml(&module, &targets, s.threads, s.state)).expect("the plan");
    let plan_again = dir.join("plan-again.yaml");
    std::fs::write(&plan_again, plan_yaml(&module, &again, s.threads, s.state)).expect("the plan");
    let direct = Ctx::new(&direct_module, kwp);
    // SoftHSM renumbers private objects after a logout (the last session closing): one
    // session per token stays open for the whole run so that handles keep their meaning.
    let _anchors: Vec<Session> = all.iter().map(|t| direct.login(t)).collect();
    let gen_s = generate(&direct, &s);
    let _ = write!(out, " gen_s={gen_s:.1}");
    if s.mode == Mode::Gen {
        println!("{out}");
        return;
    }
    let objs = source_objects(&direct);
    assert_eq!(objs.len(), s.objects());
    let c = if s.latency_us > 0 {
        Ctx::new(&module, kwp)
    } else {
        direct
    };
    let n = objs.len() as f64;

    // (b) the raw loop and (a) hsm-sync apply, twice, interleaved, the best of each
    // kept: one slow moment of a shared machine must not decide a ratio. The first
    // apply's peak RSS is the one reported.
    let mut raw = Duration::MAX;
    let mut best: Option<Applied> = None;
    let mut before = 0.0;
    let mut apply_rss = 0.0;
    // The larger share of the two rounds: the second apply writes over the first's
    // records (every key again, to other targets) and is the one that compacts them.
    let mut rec_pct: f64 = 0.0;
    // Kryoptic rows, there for the fingerprint cache's plan, take one round: its sqlite
    // store makes a 10,000-key round minutes long.
    let rounds = if s.make == Make::Kryoptic { 1 } else { 2 };
    for (round, (raw_to, plan_of)) in [(&raw_targets, &plan), (&raw_again, &plan_again)]
        .into_iter()
        .take(rounds)
        .enumerate()
    {
        raw = raw.min(raw_copy(&c, &objs, raw_to, s.threads));
        if round == 0 {
            before = rss_mb("VmRSS:");
            reset_peak();
        }
        let a = hsm_apply(plan_of, s.threads);
        assert_eq!(a.ok, objs.len() * s.targets, "every copy made and verified");
        if round == 0 {
            apply_rss = rss_mb("VmHWM:");
        }
        rec_pct = rec_pct.max(100.0 * a.records.as_secs_f64() / a.took.as_secs_f64());
        if best.as_ref().is_none_or(|b| a.took < b.took) {
            best = Some(a);
        }
    }
    let a = best.expect("a round ran");
    let _ = write!(
        out,
        " raw_s={:.3} raw_kps={:.1}",
        raw.as_secs_f64(),
        n / raw.as_secs_f64()
    );
    let _ = write!(
        out,
        " apply_s={:.3} apply_kps={:.1} exec_kps={:.1} rec_pct={:.1} norec_kps={:.1} before_rss_mb={before:.1} apply_rss_mb={apply_rss:.1}",
        a.took.as_secs_f64(),
        n / a.took.as_secs_f64(),
        n / a.exec.as_secs_f64(),
        rec_pct,
        n / a.took.saturating_sub(a.records).as_secs_f64(),
    );

    // (c) plan against the raw inventory, best of two each. Where tokens keep
    // CKA_UNIQUE_ID a no-op apply comes first: on the token backend the fingerprint cache
    // is written by apply (plan writes no token), and a fleet a pipeline keeps in step
    // has had one.
    if s.make == Make::Kryoptic {
        let settled = hsm_apply(&plan, s.threads);
        assert_eq!(settled.ok, 0, "nothing left to copy");
    }
    let tokens: Vec<String> = std::iter::once("src".to_string())
        .chain(targets.iter().cloned())
        .collect();
    let mut best_plan = Duration::MAX;
    let mut best_inv = Duration::MAX;
    let mut best_invw = Duration::MAX;
    for _ in 0..2 {
        let (t, n) = hsm_plan(&plan);
        assert_eq!(n, objs.len() * s.targets, "plan sees every copy");
        best_plan = best_plan.min(t);
        let (t, _) = raw_inventory(&c, &tokens);
        best_inv = best_inv.min(t);
        let (t, _) = raw_inventory_and_wraps(&c, &tokens);
        best_invw = best_invw.min(t);
    }
    let _ = write!(
        out,
        " plan_s={:.3} inv_s={:.3} invw_s={:.3}",
        best_plan.as_secs_f64(),
        best_inv.as_secs_f64(),
        best_invw.as_secs_f64()
    );
    println!("{out}");
    if std::env::var_os("HSM_SYNC_BENCH_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
}
