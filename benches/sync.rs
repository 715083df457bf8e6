//! The sync benchmark (issue 6): hsm-sync against the PKCS#11 limit, on fresh SoftHSM
//! tokens, in one run.
//!
//! ```sh
//! cargo bench --bench sync                 # every scenario (~10 minutes)
//! cargo bench --bench sync -- --quick      # a one-minute subset
//! cargo bench --bench sync -- --only aes-1000 --threads 2 --no-rss
//! BENCH_TIMINGS=1 cargo bench --bench sync -- --only lat1ms   # + each report's timings
//! ```
//!
//! Each scenario runs in a child process (this binary re-executed with `--child`): SoftHSM
//! reads `SOFTHSM2_CONF` once per process, and a fresh process gives a fresh
//! `C_Initialize` and a clean peak-RSS reading. In a child, on one token directory:
//!
//! 1. provisioning (not timed): a source token with the keys, empty targets `h1..` for
//!    hsm-sync and `r1..` for the raw loop, one domain key on all;
//! 2. **raw**: a minimal cryptoki loop on `threads` workers, doing only wrap (one
//!    `C_WrapKey` into a buffer sized in advance) → `C_UnwrapKey` on every target →
//!    verify (wrap the copy, compare); public halves of pairs: read, `C_CreateObject`,
//!    read back and compare. It knows its keys in advance (no inventory);
//! 3. **apply**: the `apply` command itself, run in this process through
//!    [`hsm_sync::run`] (load, connect with lineage proofs, inventory, diff, journals,
//!    jobs, lifecycle records, report) with the same thread count;
//! 4. **plan**: the `plan --format json` command, in-process the same way (every key now
//!    `unchanged`) against a **raw inventory**: per token, find all objects, then one
//!    `C_GetAttributeValue` per object for the same attributes, buffers sized in advance,
//!    tokens one after the other. Best of two runs each.
//!
//! keys/s counts source key objects (a pair is two) copied to every target per second.

use std::fmt::Write as _;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki_sys as sys;
use hsm_sync::diff::Action;
use hsm_sync::report::Status;
use secrecy::SecretString;
use testkit::provision::{self, PairSpec, Provisioner, SecretSpec};
use zeroize::Zeroizing;

const DOMAIN: &str = "hsm-sync-domain";

#[derive(Clone, Copy, PartialEq, Debug)]
enum Kind {
    Aes,
    Rsa,
    Ec,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Store {
    Shm,
    Disk,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Mode {
    /// raw loop, apply, plan, raw inventory
    Sync,
    /// provision only (for the 100k plan-RSS row)
    Gen,
    /// plan only, in a fresh process, on a directory `Gen` made
    PlanRss,
}

#[derive(Clone, Debug)]
struct Scenario {
    mode: Mode,
    kind: Kind,
    /// Source keys to generate: AES keys, or pairs.
    keys: usize,
    targets: usize,
    store: Store,
    latency_us: u64,
    threads: usize,
}

impl Scenario {
    fn name(&self) -> String {
        let kind = match self.kind {
            Kind::Aes => "aes",
            Kind::Rsa => "rsa",
            Kind::Ec => "ec",
        };
        let store = match self.store {
            Store::Shm => "shm",
            Store::Disk => "disk",
        };
        let mut n = format!("{kind}-{}-t{}-{store}", self.keys, self.targets);
        if self.latency_us > 0 {
            let _ = write!(n, "-lat{}ms", self.latency_us / 1000);
        }
        let _ = write!(n, "-j{}", self.threads);
        match self.mode {
            Mode::Sync => n,
            Mode::Gen | Mode::PlanRss => format!("plan-rss-{n}"),
        }
    }

    fn args(&self) -> Vec<String> {
        vec![
            format!("{:?}", self.mode),
            format!("{:?}", self.kind),
            self.keys.to_string(),
            self.targets.to_string(),
            format!("{:?}", self.store),
            self.latency_us.to_string(),
            self.threads.to_string(),
        ]
    }

    fn parse(a: &[String]) -> Scenario {
        let num = |i: usize| a[i].parse::<u64>().expect("a numeric scenario argument");
        Scenario {
            mode: match a[0].as_str() {
                "Sync" => Mode::Sync,
                "Gen" => Mode::Gen,
                _ => Mode::PlanRss,
            },
            kind: match a[1].as_str() {
                "Aes" => Kind::Aes,
                "Rsa" => Kind::Rsa,
                _ => Kind::Ec,
            },
            keys: num(2) as usize,
            targets: num(3) as usize,
            store: if a[4] == "Shm" { Store::Shm } else { Store::Disk },
            latency_us: num(5),
            threads: num(6) as usize,
        }
    }

    /// Key objects on the source (a pair is two).
    fn objects(&self) -> usize {
        match self.kind {
            Kind::Aes => self.keys,
            _ => 2 * self.keys,
        }
    }

    fn dir(&self) -> PathBuf {
        let base = match self.store {
            Store::Shm => "/dev/shm",
            Store::Disk => "/var/tmp",
        };
        let mut s = self.clone();
        s.mode = Mode::Sync;
        // One id per bench run (the orchestrator's pid), shared by its children.
        let run = std::env::var("HSM_SYNC_BENCH_RUN").unwrap_or_else(|_| std::process::id().to_string());
        PathBuf::from(base).join(format!("hsm-sync-bench-{run}-{}", s.name()))
    }
}

// ───────────────────────────── the orchestrator ─────────────────────────────

struct Opts {
    quick: bool,
    only: Vec<String>,
    threads: usize,
    rss: bool,
    keep: bool,
}

fn scenarios(o: &Opts) -> Vec<Scenario> {
    let j = o.threads;
    let s = |kind, keys, targets, store, latency_us, threads| Scenario {
        mode: Mode::Sync,
        kind,
        keys,
        targets,
        store,
        latency_us,
        threads,
    };
    use Kind::*;
    use Store::*;
    let mut v = if o.quick {
        vec![
            s(Aes, 1000, 1, Shm, 0, j),
            s(Aes, 1000, 2, Shm, 0, j),
            s(Ec, 100, 1, Shm, 0, j),
            s(Rsa, 25, 1, Shm, 0, j),
            s(Aes, 200, 1, Shm, 1000, j),
        ]
    } else {
        vec![
            s(Aes, 1000, 1, Shm, 0, j),
            s(Aes, 1000, 2, Shm, 0, j),
            s(Aes, 10000, 1, Shm, 0, j),
            s(Aes, 10000, 2, Shm, 0, j),
            s(Rsa, 200, 1, Shm, 0, j),
            s(Rsa, 200, 2, Shm, 0, j),
            s(Ec, 200, 1, Shm, 0, j),
            s(Ec, 200, 2, Shm, 0, j),
            s(Aes, 1000, 1, Disk, 0, j),
            s(Aes, 1000, 2, Disk, 0, j),
            s(Ec, 200, 1, Disk, 0, j),
            s(Aes, 1000, 1, Shm, 1000, j),
            s(Aes, 1000, 2, Shm, 1000, j),
            s(Aes, 1000, 1, Shm, 1000, 8),
            s(Aes, 1000, 2, Shm, 1000, 8),
            s(Aes, 200, 1, Shm, 5000, j),
            s(Aes, 200, 2, Shm, 5000, j),
            s(Aes, 200, 2, Shm, 5000, 8),
        ]
    };
    if o.rss {
        v.push(Scenario {
            mode: Mode::PlanRss,
            kind: Aes,
            keys: if o.quick { 10_000 } else { 100_000 },
            targets: 1,
            store: Shm,
            latency_us: 0,
            threads: j,
        });
    }
    v.retain(|s| o.only.is_empty() || o.only.iter().any(|p| s.name().contains(p.as_str())));
    v
}

/// The test-only latency shim, built in release mode.
fn shim() -> PathBuf {
    testkit::build::shim(true)
}

/// What a child reports: `key=value` pairs on one `RESULT` line.
#[derive(Default, Debug)]
struct Row {
    values: std::collections::HashMap<String, f64>,
}

impl Row {
    fn get(&self, k: &str) -> Option<f64> {
        self.values.get(k).copied()
    }
}

fn run_child(s: &Scenario, shim: Option<&Path>, keep: bool) -> Option<Row> {
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

fn orchestrate(o: Opts) {
    std::env::set_var("HSM_SYNC_BENCH_RUN", std::process::id().to_string());
    let list = scenarios(&o);
    let shim = list.iter().any(|s| s.latency_us > 0).then(shim);
    println!(
        "hsm-sync sync benchmark: {} scenario(s), {} core(s), SoftHSM {}",
        list.len(),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        provision::softhsm_module().map_or("(missing)".into(), |p| p.display().to_string())
    );
    println!("keys/s = source key objects copied to every target per second (a pair is 2 objects)");
    println!("apply = the `apply` command run in-process (load, connect, inventory, diff, jobs, report); raw = wrap → unwrap → verify only");
    println!("exec = apply's jobs alone (the report's timings.execute_ms: apply minus connect, inventory and diff)");
    println!("rec% = share of apply spent writing the lifecycle records (timings.notify_ms); -rec/raw = apply without them, against raw");
    println!(
        "plan = the `plan --format json` command in-process (all unchanged); inv = find + 1 C_GetAttributeValue/object"
    );
    println!("RSS MB (+) = the process's peak during apply (plan for plan-rss), SoftHSM included, and (+) its growth");
    println!("  over the RSS just before (SoftHSM keeps every object in memory: new copies grow it too)");
    println!();
    let header = format!(
        "{:<30} {:>6} {:>9} {:>9} {:>6} {:>9} {:>6} {:>5} {:>8} {:>8} {:>8} {:>6} {:>11} {:>7}",
        "scenario",
        "keys",
        "raw k/s",
        "apply k/s",
        "a/raw",
        "exec k/s",
        "e/raw",
        "rec%",
        "-rec/raw",
        "plan s",
        "inv s",
        "p/inv",
        "RSS MB (+)",
        "gen s"
    );
    println!("{header}");
    println!("{}", "─".repeat(header.chars().count()));
    let mut results: Vec<(Scenario, Row)> = Vec::new();
    for s in list {
        let row = match s.mode {
            Mode::PlanRss => {
                let mut gen = s.clone();
                gen.mode = Mode::Gen;
                let g = run_child(&gen, None, true);
                let r = g.and_then(|g| {
                    let mut r = run_child(&s, None, o.keep)?;
                    r.values.insert("gen_s".into(), g.get("gen_s").unwrap_or(0.0));
                    Some(r)
                });
                let _ = std::fs::remove_dir_all(s.dir());
                r
            }
            _ => run_child(&s, shim.as_deref(), o.keep),
        };
        let Some(row) = row else { continue };
        print_row(&s, &row);
        results.push((s, row));
    }
    summary(&results);
}

fn print_row(s: &Scenario, r: &Row) {
    let f = |k: &str, digits: usize| r.get(k).map_or("-".to_string(), |v| format!("{v:.digits$}"));
    let ratio = |a: &str, b: &str| match (r.get(a), r.get(b)) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "-".into(),
    };
    match s.mode {
        Mode::PlanRss => println!(
            "{:<30} {:>6} {:>9} {:>9} {:>6} {:>9} {:>6} {:>5} {:>8} {:>8} {:>8} {:>6} {:>11} {:>7}   (RSS after connect, i.e. SoftHSM's own objects: {} MB)",
            s.name(),
            s.objects(),
            "-",
            "-",
            "-",
            "-",
            "-",
            "-",
            "-",
            f("plan_s", 2),
            "-",
            "-",
            match (r.get("plan_rss_mb"), r.get("connect_rss_mb")) {
                (Some(p), Some(c)) => format!("{p:.0} (+{:.0})", p - c),
                _ => "-".into(),
            },
            f("gen_s", 0),
            f("connect_rss_mb", 0),
        ),
        _ => println!(
            "{:<30} {:>6} {:>9} {:>9} {:>6} {:>9} {:>6} {:>5} {:>8} {:>8} {:>8} {:>6} {:>11} {:>7}",
            s.name(),
            s.objects(),
            f("raw_kps", 0),
            f("apply_kps", 0),
            ratio("apply_kps", "raw_kps"),
            f("exec_kps", 0),
            ratio("exec_kps", "raw_kps"),
            f("rec_pct", 0),
            ratio("norec_kps", "raw_kps"),
            f("plan_s", 3),
            f("inv_s", 3),
            ratio("plan_s", "inv_s"),
            match (r.get("apply_rss_mb"), r.get("before_rss_mb")) {
                (Some(p), Some(b)) => format!("{p:.0} (+{:.0})", p - b),
                _ => "-".into(),
            },
            f("gen_s", 0),
        ),
    }
}

/// The targets that compare rows: two targets against one, and 1k against 10k keys.
fn summary(results: &[(Scenario, Row)]) {
    println!();
    println!("Two targets against one (wall time per source key, t2/t1; 1.00 = free second target):");
    for (s2, r2) in results.iter().filter(|(s, _)| s.targets == 2 && s.mode == Mode::Sync) {
        let one = results
            .iter()
            .find(|(s, _)| s.targets == 1 && s.mode == Mode::Sync && same_but(s, s2, |x| x.targets = 2));
        if let Some((_, r1)) = one {
            let t = |r: &Row, k: &str| r.get(k).map(|v| 1.0 / v);
            if let (Some(a1), Some(a2), Some(w1), Some(w2)) = (
                t(r1, "apply_kps"),
                t(r2, "apply_kps"),
                t(r1, "raw_kps"),
                t(r2, "raw_kps"),
            ) {
                println!("  {:<30} apply {:.2}   raw {:.2}", s2.name(), a2 / a1, w2 / w1);
            }
        }
    }
    println!("Linearity (time per key at 10,000 keys / at 1,000 keys; target within 0.85–1.15):");
    for (s10, r10) in results.iter().filter(|(s, _)| s.keys == 10_000 && s.mode == Mode::Sync) {
        let one = results
            .iter()
            .find(|(s, _)| s.mode == Mode::Sync && same_but(s, s10, |x| x.keys = 10_000));
        if let Some((_, r1)) = one {
            let per = |r: &Row, k: &str, n: f64| r.get(k).map(|v| v / n);
            if let (Some(a1), Some(a10)) = (r1.get("apply_kps"), r10.get("apply_kps")) {
                // The raw loop's own ratio in the same rows: how far the token itself is
                // from linear (SoftHSM's searches and object store grow with its objects).
                let raw = match (r1.get("raw_kps"), r10.get("raw_kps")) {
                    (Some(w1), Some(w10)) => format!("   raw {:.2}", w1 / w10),
                    _ => String::new(),
                };
                println!("  {:<30} apply {:.2}{raw}", s10.name(), a1 / a10);
            }
            if let (Some(p1), Some(p10)) = (per(r1, "plan_s", 1000.0), per(r10, "plan_s", 10_000.0)) {
                println!("  {:<30} plan  {:.2}", s10.name(), p10 / p1);
            }
        }
    }
}

fn same_but(a: &Scenario, b: &Scenario, f: impl Fn(&mut Scenario)) -> bool {
    let mut a = a.clone();
    f(&mut a);
    a.name() == b.name()
}

// ───────────────────────────── a child: one scenario ─────────────────────────────

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

fn pin(t: &str) -> String {
    format!("{t}-user-pin-0000")
}

/// The bench's own cryptoki context on a module, with the raw function list beside it
/// for the calls cryptoki makes twice.
struct Ctx {
    ctx: Pkcs11,
    f: sys::CK_FUNCTION_LIST,
    _lib: sys::Pkcs11,
}

impl Ctx {
    fn new(module: &Path) -> Ctx {
        let ctx = Pkcs11::new(module).expect("the PKCS#11 module loads");
        match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(e) => panic!("C_Initialize: {e}"),
        }
        // SAFETY: the same library cryptoki loaded (dlopen shares it); its function list
        // stays valid while `_lib` holds the library.
        let (lib, f) = unsafe {
            let lib = sys::Pkcs11::new(module).expect("the module loads");
            let mut p: *mut sys::CK_FUNCTION_LIST = std::ptr::null_mut();
            assert_eq!(lib.C_GetFunctionList(&mut p), sys::CKR_OK, "C_GetFunctionList");
            (lib, *p)
        };
        Ctx { ctx, f, _lib: lib }
    }

    fn slot(&self, label: &str) -> Slot {
        for s in self.ctx.get_slots_with_token().expect("slots") {
            if self.ctx.get_token_info(s).expect("token info").label() == label {
                return s;
            }
        }
        panic!("no token labelled {label}");
    }

    /// A session, logged in (the login holds while any session of the process is open).
    fn login(&self, label: &str) -> Session {
        let s = self.ctx.open_rw_session(self.slot(label)).expect("a session");
        match s.login(UserType::User, Some(&SecretString::from(pin(label)))) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => s,
            Err(e) => panic!("login on {label}: {e}"),
        }
    }

    fn domain_key(&self, s: &Session) -> ObjectHandle {
        let found = s
            .find_objects(&[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::Label(DOMAIN.as_bytes().to_vec()),
            ])
            .expect("find the domain key");
        found[0]
    }

    /// One `C_WrapKey` (RFC 5649) into a buffer sized in advance.
    fn wrap(&self, s: &Session, dk: ObjectHandle, h: ObjectHandle, buf: &mut [u8]) -> usize {
        let mut mech = sys::CK_MECHANISM {
            mechanism: sys::CKM_AES_KEY_WRAP_PAD,
            pParameter: std::ptr::null_mut(),
            ulParameterLen: 0,
        };
        let mut len = buf.len() as sys::CK_ULONG;
        let wrap = self.f.C_WrapKey.expect("C_WrapKey");
        // SAFETY: valid session and handles, buffer and length describe `buf`.
        let rv = unsafe {
            wrap(
                s.handle(),
                &mut mech,
                dk.handle(),
                h.handle(),
                buf.as_mut_ptr(),
                &mut len,
            )
        };
        assert_eq!(rv, sys::CKR_OK, "C_WrapKey");
        len as usize
    }

    /// One `C_GetAttributeValue` for `types`, each with a buffer of `size` bytes; returns
    /// the values (empty where unavailable).
    fn read(&self, s: &Session, h: ObjectHandle, types: &[(AttributeType, usize)]) -> Vec<Vec<u8>> {
        let mut bufs: Vec<Vec<u8>> = types.iter().map(|(_, n)| vec![0u8; *n]).collect();
        let mut tmpl: Vec<sys::CK_ATTRIBUTE> = types
            .iter()
            .zip(bufs.iter_mut())
            .map(|((t, _), b)| sys::CK_ATTRIBUTE {
                type_: (*t).into(),
                pValue: b.as_mut_ptr().cast(),
                ulValueLen: b.len() as sys::CK_ULONG,
            })
            .collect();
        let get = self.f.C_GetAttributeValue.expect("C_GetAttributeValue");
        // SAFETY: every template entry points at its own live buffer of the stated length.
        let rv = unsafe { get(s.handle(), h.handle(), tmpl.as_mut_ptr(), tmpl.len() as sys::CK_ULONG) };
        assert!(
            matches!(
                rv,
                sys::CKR_OK | sys::CKR_ATTRIBUTE_TYPE_INVALID | sys::CKR_ATTRIBUTE_SENSITIVE
            ),
            "C_GetAttributeValue: {rv:#x}"
        );
        bufs.into_iter()
            .zip(&tmpl)
            .map(|(mut b, a)| {
                if a.ulValueLen == sys::CK_UNAVAILABLE_INFORMATION {
                    b.clear();
                } else {
                    b.truncate(a.ulValueLen as usize);
                }
                b
            })
            .collect()
    }
}

/// The attributes hsm-sync reads per key, with buffer sizes that fit SoftHSM's keys.
const INVENTORY: &[(AttributeType, usize)] = &[
    (AttributeType::Class, 8),
    (AttributeType::KeyType, 8),
    (AttributeType::Id, 64),
    (AttributeType::Label, 128),
    (AttributeType::Private, 1),
    (AttributeType::Sensitive, 1),
    (AttributeType::Extractable, 1),
    (AttributeType::Encrypt, 1),
    (AttributeType::Decrypt, 1),
    (AttributeType::Sign, 1),
    (AttributeType::Verify, 1),
    (AttributeType::Wrap, 1),
    (AttributeType::Unwrap, 1),
    (AttributeType::Derive, 1),
    (AttributeType::SignRecover, 1),
    (AttributeType::VerifyRecover, 1),
    (AttributeType::Modifiable, 1),
    (AttributeType::ValueLen, 8),
    (AttributeType::Modulus, 1024),
    (AttributeType::PublicExponent, 16),
    (AttributeType::EcParams, 64),
    (AttributeType::EcPoint, 160),
];

/// One source key as the raw loop knows it (from its own provisioning).
struct Obj {
    h: ObjectHandle,
    class: ObjectClass,
    key_type: KeyType,
    id: Vec<u8>,
    label: Vec<u8>,
}

/// The template hsm-sync's copies carry (same attributes, so SoftHSM does the same work).
fn template(o: &Obj) -> Vec<Attribute> {
    let mut t = vec![
        Attribute::Class(o.class),
        Attribute::KeyType(o.key_type),
        Attribute::Token(true),
        Attribute::Id(o.id.clone()),
        Attribute::Label(o.label.clone()),
        Attribute::Private(o.class != ObjectClass::PUBLIC_KEY),
        Attribute::Modifiable(true),
    ];
    let secret = o.class == ObjectClass::SECRET_KEY;
    match o.class {
        ObjectClass::PUBLIC_KEY => t.extend([
            Attribute::Encrypt(o.key_type == KeyType::RSA),
            Attribute::Verify(true),
            Attribute::VerifyRecover(false),
            Attribute::Wrap(false),
            Attribute::Derive(false),
        ]),
        _ => {
            t.extend([Attribute::Sensitive(true), Attribute::Extractable(true)]);
            if secret {
                t.extend([
                    Attribute::Encrypt(true),
                    Attribute::Decrypt(true),
                    Attribute::Sign(false),
                    Attribute::Verify(false),
                    Attribute::Wrap(false),
                    Attribute::Unwrap(false),
                    Attribute::Derive(false),
                ]);
            } else {
                t.extend([
                    Attribute::Decrypt(o.key_type == KeyType::RSA),
                    Attribute::Sign(true),
                    Attribute::SignRecover(false),
                    Attribute::Unwrap(false),
                    Attribute::Derive(false),
                ]);
            }
        }
    }
    t
}

fn public_parts(key_type: KeyType) -> &'static [(AttributeType, usize)] {
    if key_type == KeyType::RSA {
        &[(AttributeType::Modulus, 1024), (AttributeType::PublicExponent, 16)]
    } else {
        &[(AttributeType::EcParams, 64), (AttributeType::EcPoint, 160)]
    }
}

/// The raw loop: every key wrapped once, unwrapped on every target, each copy verified.
fn raw_copy(c: &Ctx, objs: &[Obj], targets: &[String], threads: usize) -> Duration {
    let anchors: Vec<Session> = std::iter::once("src".to_string())
        .chain(targets.iter().cloned())
        .map(|t| c.login(&t))
        .collect();
    let src_slot = c.slot("src");
    let slots: Vec<Slot> = targets.iter().map(|t| c.slot(t)).collect();
    let dk_src = c.domain_key(&anchors[0]);
    let dks: Vec<ObjectHandle> = anchors[1..].iter().map(|s| c.domain_key(s)).collect();
    let next = AtomicUsize::new(0);
    let start = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                let src = c.ctx.open_rw_session(src_slot).expect("a source session");
                let dst: Vec<Session> = slots
                    .iter()
                    .map(|s| c.ctx.open_rw_session(*s).expect("a target session"))
                    .collect();
                let mut blob = Zeroizing::new(vec![0u8; 4096]);
                let mut check = Zeroizing::new(vec![0u8; 4096]);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(o) = objs.get(i) else { break };
                    let tmpl = template(o);
                    if o.class == ObjectClass::PUBLIC_KEY {
                        let parts = public_parts(o.key_type);
                        let values = c.read(&src, o.h, parts);
                        let mut t = tmpl.clone();
                        if o.key_type == KeyType::RSA {
                            t.push(Attribute::Modulus(values[0].clone()));
                            t.push(Attribute::PublicExponent(values[1].clone()));
                        } else {
                            t.push(Attribute::EcParams(values[0].clone()));
                            t.push(Attribute::EcPoint(values[1].clone()));
                        }
                        for s in &dst {
                            let h = s.create_object(&t).expect("C_CreateObject");
                            assert_eq!(c.read(s, h, parts), values, "the public copy differs");
                        }
                    } else {
                        let n = c.wrap(&src, dk_src, o.h, &mut blob);
                        for (s, dk) in dst.iter().zip(&dks) {
                            let h = s
                                .unwrap_key(&Mechanism::AesKeyWrapPad, *dk, &blob[..n], &tmpl)
                                .expect("C_UnwrapKey");
                            let m = c.wrap(s, *dk, h, &mut check);
                            assert_eq!(blob[..n], check[..m], "the copy differs");
                        }
                    }
                }
            });
        }
    });
    let took = start.elapsed();
    drop(anchors);
    took
}

/// The raw inventory: per token, find every object, one `C_GetAttributeValue` each.
fn raw_inventory(c: &Ctx, tokens: &[String]) -> (Duration, usize) {
    let start = Instant::now();
    let mut n = 0;
    for t in tokens {
        let s = c.login(t);
        let all: Vec<ObjectHandle> = s
            .iter_objects_with_cache_size(&[Attribute::Token(true)], NonZeroUsize::new(4096).expect("nonzero"))
            .expect("C_FindObjectsInit")
            .collect::<Result<_, _>>()
            .expect("C_FindObjects");
        for h in all {
            let v = c.read(&s, h, INVENTORY);
            assert!(!v[0].is_empty(), "every object has a class");
            n += 1;
        }
    }
    (start.elapsed(), n)
}

fn plan_yaml(module: &Path, targets: &[String], threads: usize) -> String {
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
    y
}

/// Runs an hsm-sync command in this process, exactly as the binary would (same entry
/// point, same stages, same output), and returns the report it wrote to `report`.
fn hsm_command(args: &[&str], report: &Path) -> hsm_sync::report::Report {
    let argv = std::iter::once("hsm-sync")
        .chain(args.iter().copied())
        .map(std::ffi::OsString::from);
    let code = hsm_sync::run(argv);
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

/// `plan --format json`, its stdout captured to a file beside the plan.
fn hsm_plan_report(plan: &Path) -> hsm_sync::report::Report {
    let out = plan.with_file_name("plan-report.json");
    let file = std::fs::File::create(&out).expect("the plan output file");
    // The command prints to stdout: point fd 1 at the file for its duration.
    let saved = redirect_stdout(&file);
    let r = hsm_command(&["plan", path_str(plan), "--format", "json"], &out);
    restore_stdout(saved);
    r
}

/// Points fd 1 at `file`; returns the old stdout to put back.
fn redirect_stdout(file: &std::fs::File) -> i32 {
    use std::io::Write as _;
    use std::os::fd::AsRawFd;
    let _ = std::io::stdout().flush();
    // SAFETY: plain descriptor calls on descriptors this process owns.
    unsafe {
        let saved = libc::dup(1);
        assert!(saved >= 0 && libc::dup2(file.as_raw_fd(), 1) == 1, "redirecting stdout");
        saved
    }
}

/// Puts back the stdout [`redirect_stdout`] saved.
fn restore_stdout(saved: i32) {
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    // SAFETY: `saved` is the descriptor `dup` returned.
    unsafe {
        libc::dup2(saved, 1);
        libc::close(saved);
    }
}

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

fn source_objects(c: &Ctx) -> Vec<Obj> {
    let s = c.login("src");
    let mut out = Vec::new();
    for class in [
        ObjectClass::SECRET_KEY,
        ObjectClass::PRIVATE_KEY,
        ObjectClass::PUBLIC_KEY,
    ] {
        for h in s
            .find_objects(&[Attribute::Token(true), Attribute::Class(class)])
            .expect("find")
        {
            let v = c.read(
                &s,
                h,
                &[
                    (AttributeType::KeyType, 8),
                    (AttributeType::Id, 64),
                    (AttributeType::Label, 128),
                ],
            );
            if v[2] == DOMAIN.as_bytes() {
                continue;
            }
            let kt = u64::from_ne_bytes(v[0][..8].try_into().expect("CK_KEY_TYPE is 8 bytes"));
            out.push(Obj {
                h,
                class,
                key_type: KeyType::try_from(kt).expect("a known key type"),
                id: v[1].clone(),
                label: v[2].clone(),
            });
        }
    }
    out
}

fn child(args: &[String]) {
    let s = Scenario::parse(args);
    let dir = s.dir();
    let softhsm = provision::softhsm_module().expect("SoftHSM2 is installed (apt-get install -y softhsm2)");
    let targets: Vec<String> = (1..=s.targets).map(|i| format!("h{i}")).collect();
    let raw_targets: Vec<String> = (1..=s.targets).map(|i| format!("r{i}")).collect();
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
        std::env::set_var("HSM_SYNC_SHIM_TARGET", &softhsm);
        std::env::set_var("HSM_SYNC_SHIM_LATENCY_US", s.latency_us.to_string());
        shim.expect("the orchestrator built the shim")
    } else {
        softhsm.clone()
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
        let _ = raw_inventory(&Ctx::new(&module), &tokens);
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

    // Provisioning, directly on SoftHSM (never through the latency shim).
    let prov = Provisioner::new(&softhsm).expect("SoftHSM loads");
    let all: Vec<String> = std::iter::once("src".to_string())
        .chain(targets.iter().cloned())
        .chain(if s.mode == Mode::Sync {
            raw_targets.clone()
        } else {
            Vec::new()
        })
        .collect();
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
    std::fs::write(&plan, plan_yaml(&module, &targets, s.threads)).expect("the plan");
    let direct = Ctx::new(&softhsm);
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
    let c = if s.latency_us > 0 { Ctx::new(&module) } else { direct };
    let n = objs.len() as f64;

    // (b) the raw loop
    let raw = raw_copy(&c, &objs, &raw_targets, s.threads);
    let _ = write!(
        out,
        " raw_s={:.3} raw_kps={:.1}",
        raw.as_secs_f64(),
        n / raw.as_secs_f64()
    );

    // (a) hsm-sync apply
    let before = rss_mb("VmRSS:");
    reset_peak();
    let a = hsm_apply(&plan, s.threads);
    assert_eq!(a.ok, objs.len() * s.targets, "every copy made and verified");
    let _ = write!(
        out,
        " apply_s={:.3} apply_kps={:.1} exec_kps={:.1} rec_pct={:.1} norec_kps={:.1} before_rss_mb={before:.1} apply_rss_mb={:.1}",
        a.took.as_secs_f64(),
        n / a.took.as_secs_f64(),
        n / a.exec.as_secs_f64(),
        100.0 * a.records.as_secs_f64() / a.took.as_secs_f64(),
        n / a.took.saturating_sub(a.records).as_secs_f64(),
        rss_mb("VmHWM:")
    );

    // (c) plan against the raw inventory, best of two each
    let tokens: Vec<String> = std::iter::once("src".to_string())
        .chain(targets.iter().cloned())
        .collect();
    let mut best_plan = Duration::MAX;
    let mut best_inv = Duration::MAX;
    for _ in 0..2 {
        let (t, n) = hsm_plan(&plan);
        assert_eq!(n, objs.len() * s.targets, "plan sees every copy");
        best_plan = best_plan.min(t);
        let (t, _) = raw_inventory(&c, &tokens);
        best_inv = best_inv.min(t);
    }
    let _ = write!(
        out,
        " plan_s={:.3} inv_s={:.3}",
        best_plan.as_secs_f64(),
        best_inv.as_secs_f64()
    );
    println!("{out}");
    if std::env::var_os("HSM_SYNC_BENCH_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(pos) = args.iter().position(|a| a == "--child") {
        child(&args[pos + 1..]);
        return;
    }
    let mut o = Opts {
        quick: false,
        only: Vec::new(),
        threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
        rss: true,
        keep: false,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => o.quick = true,
            "--only" => o.only.extend(it.next().cloned()),
            "--threads" => o.threads = it.next().and_then(|n| n.parse().ok()).expect("--threads N"),
            "--no-rss" => o.rss = false,
            "--keep" => o.keep = true,
            "--bench" => {} // cargo bench passes it to every bench binary
            "--help" | "-h" => {
                println!(
                    "cargo bench --bench sync -- [--quick] [--only PATTERN]... [--threads N] [--no-rss] [--keep]\n\n\
                     --quick      a one-minute subset (1,000 AES keys, a few pairs, one 1 ms latency row, 10k plan RSS)\n\
                     --only P     scenarios whose name contains P (repeatable), e.g. aes-10000, lat1ms, disk, plan-rss\n\
                     --threads N  worker threads for apply and the raw loop (default: the CPU count)\n\
                     --no-rss     skip the 100,000-key plan peak-RSS row (its key generation takes minutes)\n\
                     --keep       keep the token directories"
                );
                return;
            }
            other => eprintln!("ignoring unknown argument {other}"),
        }
    }
    orchestrate(o);
}
