//! A small fluent builder for SoftHSM-backed tests:
//! `World::new().tokens(&["primary", "dr"]).domain_key(&["primary", "dr"]).plan(..).run(..)`,
//! reports read as typed data (`hsm_sync::report::Report`), and the schema check.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::Value;

// The report's types, named once for every test file.
pub use hsm_sync::diff::Action;
pub use hsm_sync::domain::key::KeyClass;
pub use hsm_sync::report::{JobRecord, Report, Status};

/// The SoftHSM2 module, or a loud failure: a test that needs SoftHSM never skips.
pub fn softhsm() -> PathBuf {
    testkit::provision::softhsm_module().unwrap_or_else(|| {
        panic!("SoftHSM2 is required for the integration tests and is not installed: run `apt-get install -y softhsm2` (or set HSM_SYNC_SOFTHSM_MODULE)")
    })
}

/// The test-only pass-through module `tools/pkcs11-shim`, built once per test process so
/// that a plain `cargo test` works on a fresh clone.
pub fn shim() -> PathBuf {
    static SHIM: OnceLock<PathBuf> = OnceLock::new();
    SHIM.get_or_init(|| testkit::build::shim(false)).clone()
}

/// Kryoptic (`tools/kryoptic`), the suite's second PKCS#11 implementation, built once per
/// test process. A build failure fails the test that needs it: never a silent skip.
pub fn kryoptic() -> PathBuf {
    static KRYOPTIC: OnceLock<PathBuf> = OnceLock::new();
    KRYOPTIC.get_or_init(testkit::build::kryoptic).clone()
}

/// Kryoptic with EdDSA (`tools/kryoptic-eddsa`, on OpenSSL 3.5 from the `openssl-src`
/// crate), built once per test process: the first build on a target directory takes
/// minutes (OpenSSL). A build failure fails the test that needs it: never a silent skip.
pub fn kryoptic_eddsa() -> PathBuf {
    static KRYOPTIC_EDDSA: OnceLock<PathBuf> = OnceLock::new();
    KRYOPTIC_EDDSA.get_or_init(testkit::build::kryoptic_eddsa).clone()
}

/// The make a test runs a token on when its module re-runs a suite on another make: the
/// suites under `on_kryoptic_dr` (see `main.rs`) put the `dr` token on Kryoptic, those
/// under `on_kryoptic_primary` the `primary` token. libtest names each test's thread by
/// its path, so a re-included suite needs no edit of its own.
pub fn remade(token: &str) -> bool {
    let thread = std::thread::current();
    let name = thread.name().unwrap_or("");
    (token == "dr" && name.starts_with("on_kryoptic_dr::"))
        || (token == "primary" && name.starts_with("on_kryoptic_primary::"))
}

/// NSS softokn (`libsoftokn3.so`, Debian's libnss3), the suite's third PKCS#11
/// implementation, or a loud failure: a test that needs it never skips.
pub fn nss() -> PathBuf {
    testkit::provision::nss_module().unwrap_or_else(|| {
        panic!("NSS softokn (libsoftokn3.so) is required for the NSS tests and is not installed: run `apt-get install -y libnss3 libnss3-tools` (or set HSM_SYNC_NSS_MODULE)")
    })
}

/// testkit's `hsm-fixture` helper, built once per test process. It runs in a process of
/// its own because SoftHSM reads one `SOFTHSM2_CONF` per process: the test process cannot
/// load the tokens of every test itself.
pub fn fixture_bin() -> PathBuf {
    static FIXTURE: OnceLock<PathBuf> = OnceLock::new();
    FIXTURE.get_or_init(testkit::build::fixture).clone()
}

/// The state backend a test runs on, chosen by its module (libtest names the thread by
/// the test's path): the suites re-included under `on_file::` and `on_postgres::` run on
/// those backends (issue 15: every notify test on each backend), the rest on `token`.
pub fn backend() -> &'static str {
    let thread = std::thread::current();
    let name = thread.name().unwrap_or("");
    if name.starts_with("on_file::") {
        "file"
    } else if name.starts_with("on_postgres::") {
        "postgres"
    } else {
        "token"
    }
}

/// The variable the postgres worlds' plans name in `state.url_env`.
pub const STATE_URL_ENV: &str = "HSM_SYNC_STATE_URL";

/// One test's token directory, plan and runs; on the postgres backend, its own database.
pub struct World {
    dir: tempfile::TempDir,
    state_url: Option<String>,
    /// The fixture's Kryoptic tokens run on [`kryoptic_eddsa`], not [`kryoptic`].
    eddsa: bool,
}

/// What a run printed and returned.
#[derive(Debug)]
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}\nstderr:\n{}", self.stdout, self.stderr))
    }

    /// stdout as a report (`plan --format json`).
    pub fn report(&self) -> Report {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not a report ({e}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }
}

/// The two-token world most tests start from: `primary` and `dr`, clones of one domain key.
pub fn pair() -> World {
    World::new().tokens(&["primary", "dr"]).domain_key(&["primary", "dr"])
}

/// A report file as typed data.
pub fn read_report(path: &Path) -> Report {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not a report ({e}):\n{text}", path.display()))
}

/// Where `instance` breaks the committed schema `schemas/NAME.schema.json`, one line per
/// error with its place; empty when it matches.
pub fn schema_errors(name: &str, instance: &Value) -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("schemas/{name}.schema.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let schema: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let validator = jsonschema::validator_for(&schema).expect("schema compiles");
    validator
        .iter_errors(instance)
        .map(|e| format!("{e} at {}", e.instance_path))
        .collect()
}

/// Fails unless `instance` (`what`, for the message) matches `schemas/NAME.schema.json`.
pub fn assert_schema(name: &str, instance: &Value, what: &str) {
    let errors = schema_errors(name, instance);
    assert!(
        errors.is_empty(),
        "{what} does not match schemas/{name}.schema.json: {errors:#?}"
    );
}

impl World {
    pub fn new() -> Self {
        softhsm();
        let base = Path::new("/dev/shm");
        let dir = if base.is_dir() {
            tempfile::Builder::new().prefix("hsm-sync-test-").tempdir_in(base)
        } else {
            tempfile::Builder::new().prefix("hsm-sync-test-").tempdir()
        }
        .expect("temporary directory");
        let state_url = (backend() == "postgres").then(|| {
            let name = dir
                .path()
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            testkit::pg::server().database(&name)
        });
        World {
            dir,
            state_url,
            eddsa: false,
        }
    }

    /// The fixture makes and uses this world's Kryoptic tokens through the EdDSA module
    /// ([`kryoptic_eddsa`]); before `tokens`. Its plans name it with
    /// [`Plan::kryoptic_eddsa`].
    pub fn eddsa_kryoptic(mut self) -> Self {
        self.eddsa = true;
        self
    }

    /// The connection string of this world's state database (postgres worlds only).
    pub fn state_url(&self) -> Option<&str> {
        self.state_url.as_deref()
    }

    /// The `state:` block this world's plans get on its backend (none on `token`). The
    /// file backend's directory is absolute: every working directory shares it, as
    /// machines share a network directory.
    pub fn state_block(&self) -> String {
        match backend() {
            "file" => format!(
                "state:\n  backend: file\n  path: {}\n",
                self.path().join("state").display()
            ),
            "postgres" => format!("state:\n  backend: postgres\n  url_env: {STATE_URL_ENV}\n"),
            _ => String::new(),
        }
    }

    /// `hsm-sync args…` from `cwd`, with the world's token configuration and, on the
    /// postgres backend, its database's connection string; not started.
    pub fn command(&self, cwd: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hsm-sync"));
        cmd.args(args)
            .current_dir(cwd)
            .env("SOFTHSM2_CONF", self.path().join("softhsm2.conf"))
            .env("KRYOPTIC_CONF", self.path().join("kryoptic.toml"))
            .env("NO_COLOR", "1");
        if let Some(url) = &self.state_url {
            cmd.env(STATE_URL_ENV, url);
        }
        cmd
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Runs `hsm-fixture DIR args…`, returning stdout; panics on failure.
    pub fn fixture(&self, args: &[&str]) -> String {
        let mut cmd = Command::new(fixture_bin());
        let kry = args.iter().any(|a| a.contains("@kryoptic"))
            || std::fs::read_to_string(self.path().join("makes")).is_ok_and(|m| m.contains(" kryoptic"));
        if kry {
            let module = if self.eddsa { kryoptic_eddsa() } else { kryoptic() };
            cmd.env("HSM_SYNC_KRYOPTIC_MODULE", module);
        }
        if args.iter().any(|a| a.ends_with("@nss")) {
            nss();
        }
        let out = cmd.arg(self.path()).args(args).output().expect("hsm-fixture runs");
        assert!(
            out.status.success(),
            "hsm-fixture {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub fn tokens(self, names: &[&str]) -> Self {
        let names: Vec<String> = names
            .iter()
            .map(|n| {
                if remade(n) {
                    format!("{n}@kryoptic")
                } else {
                    n.to_string()
                }
            })
            .collect();
        let mut args = vec!["init"];
        args.extend(names.iter().map(String::as_str));
        self.fixture(&args);
        self
    }

    /// One fresh domain key shared by `names` (a set of clones).
    pub fn domain_key(self, names: &[&str]) -> Self {
        let mut args = vec!["domain-key"];
        args.extend_from_slice(names);
        self.fixture(&args);
        self
    }

    /// `hsm-fixture keygen TOKEN --id ID --label LABEL extra…`
    pub fn key(self, token: &str, id: &str, label: &str, extra: &[&str]) -> Self {
        let mut args = vec!["keygen", token, "--id", id, "--label", label];
        args.extend_from_slice(extra);
        self.fixture(&args);
        self
    }

    /// `hsm-fixture keygen-pair TOKEN --id ID --label LABEL extra…` (e.g. `--ec p256`).
    pub fn key_pair(self, token: &str, id: &str, label: &str, extra: &[&str]) -> Self {
        let mut args = vec!["keygen-pair", token, "--id", id, "--label", label];
        args.extend_from_slice(extra);
        self.fixture(&args);
        self
    }

    /// Writes `plan.yaml`; `{module}` is replaced by the SoftHSM module path, `{kryoptic}`
    /// and `{kryoptic-eddsa}` by the Kryoptic modules' and `{dir}`
    /// by the world's directory (NSS clusters' `module_args` name their database there).
    /// A typed [`Plan`] is written as it serializes (its module path already filled in).
    pub fn plan<P: PlanText + ?Sized>(self, plan: &P) -> Self {
        let yaml = plan.plan_text();
        let mut yaml = yaml
            .replace("{module}", &softhsm().display().to_string())
            .replace("{dir}", &self.path().display().to_string());
        // Each module is built only when the plan names it.
        let mut fill = |placeholder: &str, module: fn() -> PathBuf| {
            if yaml.contains(placeholder) {
                yaml = yaml.replace(placeholder, &module().display().to_string());
            }
        };
        fill("{kryoptic}", kryoptic);
        fill("{kryoptic-eddsa}", kryoptic_eddsa);
        if !yaml.starts_with("state:") && !yaml.contains("\nstate:") {
            if !yaml.ends_with('\n') {
                yaml.push('\n');
            }
            yaml.push_str(&self.state_block());
        }
        self.write("plan.yaml", &yaml);
        self
    }

    pub fn write(&self, name: &str, contents: &str) {
        std::fs::write(self.path().join(name), contents).expect("write");
    }

    pub fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    /// A report file a run wrote in the world's directory, as typed data.
    pub fn report(&self, name: &str) -> Report {
        read_report(&self.path().join(name))
    }

    /// A JSON file a run wrote in the world's directory.
    pub fn json(&self, name: &str) -> Value {
        serde_json::from_str(&self.read(name)).unwrap_or_else(|e| panic!("{name} is not JSON: {e}"))
    }

    /// Runs `hsm-sync args…` in the world's directory with its SOFTHSM2_CONF.
    pub fn run(&self, args: &[&str]) -> Output {
        self.run_env(args, &[])
    }

    pub fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        self.run_in(self.path(), args, env)
    }

    /// Runs `hsm-sync args…` from `cwd` (perhaps not the world's directory) with the
    /// world's SOFTHSM2_CONF and `env`.
    pub fn run_in(&self, cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
        let out = self
            .command(cwd, args)
            .envs(env.iter().copied())
            .output()
            .expect("hsm-sync runs");
        Output {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    pub fn hmac(&self, token: &str, id: &str) -> String {
        self.fixture(&["hmac", token, "--id", id])
    }

    pub fn count(&self, token: &str) -> usize {
        self.fixture(&["count", token]).parse().expect("count")
    }
}

/// One cluster of a test plan: token `name` through `{module}`, crypto-user `app`, its PIN
/// from `./NAME.pin`, cloned from `from` if given.
///
/// A text shim kept for the tests that still splice plan text (see `two_cluster_plan`);
/// new tests build a [`Plan`].
pub fn cluster_yaml(name: &str, from: Option<&str>) -> String {
    let cloned = from.map(|f| format!("    cloned_from: {f}\n")).unwrap_or_default();
    let module = if remade(name) { "{kryoptic}" } else { "{module}" };
    format!(
        "  {name}:\n    module: {module}\n    token: {{ label: {name} }}\n{cloned}    credentials: {{ role: crypto-user, user: app, pin: {{ file: ./{name}.pin }} }}\n"
    )
}

/// Deprecated text shim: a two-cluster plan, `primary` → `dr`, whose `keys` is a YAML
/// fragment with significant leading spaces. Build a [`Plan`] instead; this stays only for
/// the tests that still edit the plan's text.
pub fn two_cluster_plan(keys: &str) -> String {
    format!(
        "version: 1
clusters:
{}{}sync:
  - name: main
    source: primary
    targets: [dr]
    keys:
{keys}",
        cluster_yaml("primary", None),
        cluster_yaml("dr", Some("primary"))
    )
}

/// What `World::plan` accepts: plan text (with `{module}` placeholders) or a typed [`Plan`].
pub trait PlanText {
    fn plan_text(&self) -> String;
}

impl PlanText for str {
    fn plan_text(&self) -> String {
        self.to_string()
    }
}

impl PlanText for String {
    fn plan_text(&self) -> String {
        self.clone()
    }
}

impl PlanText for Plan {
    fn plan_text(&self) -> String {
        self.yaml()
    }
}

/// Where a cluster's PIN comes from.
#[derive(Clone, Debug)]
pub enum Pin {
    /// `pin: { file: PATH }`
    File(String),
    /// `pin: { env: NAME }`
    Env(String),
    /// `pin: "TEXT"`, a literal in the plan.
    Literal(String),
}

/// How a cluster finds its token.
#[derive(Clone, Debug)]
pub enum Token {
    /// `token: { label: … }`
    Label(String),
    /// `token: { serial: "…" }`
    Serial(String),
    /// `token: { slot: N }`
    Slot(u64),
}

/// One cluster of a typed test plan.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    pub name: String,
    /// The module path; `{module}` (the default) is the SoftHSM module, `{kryoptic}`,
    /// `{kryoptic-eddsa}` and `{nss}` the others'.
    pub module: String,
    pub token: Token,
    pub cloned_from: Option<String>,
    /// `credentials.role` (`crypto-user` unless changed).
    pub role: String,
    /// `credentials.user` (`app` unless changed).
    pub user: String,
    /// `lineage: { fingerprint: … }`, pinned.
    pub lineage_fingerprint: Option<String>,
    /// `profile: …`, when set.
    pub profile: Option<String>,
    /// `lineage: { wrap: … }`, when set.
    pub wrap: Option<String>,
    /// `module_args: …` (C_Initialize's pReserved string), when set; `{dir}` is the
    /// world's directory.
    pub module_args: Option<String>,
    pub pin: Pin,
}

impl ClusterSpec {
    /// Token `name` through `{module}`, crypto-user `app`, its PIN from `./NAME.pin`.
    pub fn new(name: &str) -> Self {
        ClusterSpec {
            name: name.to_string(),
            module: if remade(name) { "{kryoptic}" } else { "{module}" }.to_string(),
            token: Token::Label(name.to_string()),
            cloned_from: None,
            role: "crypto-user".to_string(),
            user: "app".to_string(),
            lineage_fingerprint: None,
            profile: None,
            wrap: None,
            module_args: None,
            pin: Pin::File(format!("./{name}.pin")),
        }
    }

    pub fn cloned_from(mut self, from: &str) -> Self {
        self.cloned_from = Some(from.to_string());
        self
    }

    /// Logs in as `role` (`crypto-user`, `crypto-officer`) with user name `user`.
    pub fn login(mut self, role: &str, user: &str) -> Self {
        self.role = role.to_string();
        self.user = user.to_string();
        self
    }

    fn value(&self) -> serde_yaml::Value {
        let module = if self.module == "{module}" {
            softhsm().display().to_string()
        } else if self.module == "{kryoptic}" {
            kryoptic().display().to_string()
        } else if self.module == "{kryoptic-eddsa}" {
            kryoptic_eddsa().display().to_string()
        } else if self.module == "{nss}" {
            nss().display().to_string()
        } else {
            self.module.clone()
        };
        let token = match &self.token {
            Token::Label(label) => map([("label", label.as_str().into())]),
            Token::Serial(serial) => map([("serial", serial.as_str().into())]),
            Token::Slot(slot) => map([("slot", (*slot).into())]),
        };
        let pin: serde_yaml::Value = match &self.pin {
            Pin::File(path) => map([("file", path.as_str().into())]),
            Pin::Env(name) => map([("env", name.as_str().into())]),
            Pin::Literal(text) => text.as_str().into(),
        };
        let credentials = map([
            ("role", self.role.as_str().into()),
            ("user", self.user.as_str().into()),
            ("pin", pin),
        ]);
        let mut m = serde_yaml::Mapping::new();
        m.insert("module".into(), module.into());
        if let Some(args) = &self.module_args {
            m.insert("module_args".into(), args.as_str().into());
        }
        m.insert("token".into(), token);
        if let Some(from) = &self.cloned_from {
            m.insert("cloned_from".into(), from.as_str().into());
        }
        if let Some(profile) = &self.profile {
            m.insert("profile".into(), profile.as_str().into());
        }
        let mut lineage = serde_yaml::Mapping::new();
        if let Some(fingerprint) = &self.lineage_fingerprint {
            lineage.insert("fingerprint".into(), fingerprint.as_str().into());
        }
        if let Some(wrap) = &self.wrap {
            lineage.insert("wrap".into(), wrap.as_str().into());
        }
        if !lineage.is_empty() {
            m.insert("lineage".into(), lineage.into());
        }
        m.insert("credentials".into(), credentials);
        m.into()
    }
}

/// One key selector of a sync: `label: …`, `id: …` or `handle: …`, perhaps `state: absent`
/// and `allow_empty: true`.
#[derive(Clone, Debug)]
pub struct Sel {
    by: &'static str,
    value: serde_yaml::Value,
    absent: bool,
    allow_empty: bool,
}

impl Sel {
    /// `label: PATTERN`
    pub fn label(pattern: &str) -> Self {
        Sel::by("label", pattern.into())
    }

    /// `id: "HEX"` (always a string, so `01` stays `01`).
    pub fn id(hex: &str) -> Self {
        Sel::by("id", hex.into())
    }

    /// `handle: N`
    pub fn handle(handle: u64) -> Self {
        Sel::by("handle", handle.into())
    }

    fn by(by: &'static str, value: serde_yaml::Value) -> Self {
        Sel {
            by,
            value,
            absent: false,
            allow_empty: false,
        }
    }

    /// `state: absent`
    pub fn absent(mut self) -> Self {
        self.absent = true;
        self
    }

    /// `allow_empty: true`
    pub fn allow_empty(mut self) -> Self {
        self.allow_empty = true;
        self
    }

    fn value(&self) -> serde_yaml::Value {
        let mut m = serde_yaml::Mapping::new();
        m.insert(self.by.into(), self.value.clone());
        if self.absent {
            m.insert("state".into(), "absent".into());
        }
        if self.allow_empty {
            m.insert("allow_empty".into(), true.into());
        }
        m.into()
    }
}

/// A typed test plan, serialized to YAML with `serde_yaml`: clusters in order, one sync
/// `main` from `primary`, its selectors in order, and optional `options`.
///
/// `Plan::two_clusters().select(Sel::label("pay-*"))` is the plan most tests use.
#[derive(Clone, Debug)]
pub struct Plan {
    clusters: Vec<ClusterSpec>,
    sync_name: String,
    source: String,
    targets: Vec<String>,
    keys: Vec<Sel>,
    notify: Vec<serde_yaml::Value>,
    options: serde_yaml::Mapping,
    state: Option<serde_yaml::Value>,
}

impl Plan {
    /// `primary` → `dr` (`dr` cloned from `primary`), crypto-user `app`, PINs from files.
    pub fn two_clusters() -> Self {
        Plan::new(
            vec![
                ClusterSpec::new("primary"),
                ClusterSpec::new("dr").cloned_from("primary"),
            ],
            "primary",
            &["dr"],
        )
    }

    /// `clusters` in order, and one sync `main` from `source` to `targets`, no keys yet.
    pub fn new(clusters: Vec<ClusterSpec>, source: &str, targets: &[&str]) -> Self {
        Plan {
            clusters,
            sync_name: "main".to_string(),
            source: source.to_string(),
            targets: targets.iter().map(|t| t.to_string()).collect(),
            keys: Vec::new(),
            notify: Vec::new(),
            options: serde_yaml::Mapping::new(),
            state: None,
        }
    }

    /// Adds one key selector, after the ones before it.
    pub fn select(mut self, sel: Sel) -> Self {
        self.keys.push(sel);
        self
    }

    /// Drops every key selector (to `select` others).
    pub fn without_keys(mut self) -> Self {
        self.keys.clear();
        self
    }

    /// Adds a cluster `name` (cloned from `primary`) after the others, without making it a
    /// target.
    pub fn cluster(mut self, spec: ClusterSpec) -> Self {
        self.clusters.push(spec);
        self
    }

    /// The sync's targets, replacing `[dr]`.
    pub fn targets(mut self, targets: &[&str]) -> Self {
        self.targets = targets.iter().map(|t| t.to_string()).collect();
        self
    }

    /// The sync's name, replacing `main`.
    pub fn sync_name(mut self, name: &str) -> Self {
        self.sync_name = name.to_string();
        self
    }

    /// Changes cluster `name` in place.
    pub fn edit(mut self, name: &str, f: impl FnOnce(&mut ClusterSpec)) -> Self {
        let c = self
            .clusters
            .iter_mut()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no cluster `{name}` in the plan"));
        f(c);
        self
    }

    /// Cluster `name` reads its PIN from `pin`.
    pub fn pin(self, name: &str, pin: Pin) -> Self {
        self.edit(name, |c| c.pin = pin)
    }

    /// Cluster `name` finds its token by `token`.
    pub fn token(self, name: &str, token: Token) -> Self {
        self.edit(name, |c| c.token = token)
    }

    /// Cluster `name` loads `module` instead of SoftHSM.
    pub fn module(self, name: &str, module: &str) -> Self {
        self.edit(name, |c| c.module = module.to_string())
    }

    /// Cluster `name` is a Kryoptic token (made by `tokens(&["NAME@kryoptic"])`).
    pub fn kryoptic(self, name: &str) -> Self {
        self.module(name, "{kryoptic}")
    }

    /// Cluster `name` is a Kryoptic token on the EdDSA module (made in a
    /// [`World::eddsa_kryoptic`] world by `tokens(&["NAME@kryoptic"])`).
    pub fn kryoptic_eddsa(self, name: &str) -> Self {
        self.module(name, "{kryoptic-eddsa}")
    }

    /// Cluster `name` is the world's NSS softokn token (made by `tokens(&["NAME@nss"])`):
    /// softokn's module, `module_args` opening the database `DIR/nss/NAME`, and the token
    /// chosen by NSS's own label ("NSS Certificate DB"; the PIN is the database's
    /// password). softokn opens one database per process: one NSS cluster per plan.
    pub fn nss(self, name: &str) -> Self {
        self.edit(name, |c| {
            c.module = "{nss}".to_string();
            c.module_args = Some(testkit::provision::nss_module_args(
                &Path::new("{dir}").join("nss").join(&c.name),
            ));
            c.token = Token::Label(testkit::provision::NSS_TOKEN_LABEL.to_string());
        })
    }

    /// Every cluster loads `module` instead of SoftHSM.
    pub fn module_all(mut self, module: &Path) -> Self {
        for c in &mut self.clusters {
            c.module = module.display().to_string();
        }
        self
    }

    /// `state: {backend: file, path: PATH}` (relative to the plan file).
    pub fn state_file(mut self, path: &str) -> Self {
        self.state = Some(map([("backend", "file".into()), ("path", path.into())]));
        self
    }

    /// `options.parallelism: N`
    pub fn parallelism(self, n: u64) -> Self {
        self.option("parallelism", n.into())
    }

    /// `options.KEY: VALUE`, after the options before it.
    pub fn option(mut self, key: &str, value: serde_yaml::Value) -> Self {
        self.options.insert(key.into(), value);
        self
    }

    /// One notify resource of the sync (a mapping: `name`, `url`, …).
    pub fn notify(mut self, resource: serde_yaml::Value) -> Self {
        self.notify.push(resource);
        self
    }

    /// The plan as a YAML value.
    pub fn value(&self) -> serde_yaml::Value {
        let clusters: serde_yaml::Mapping = self
            .clusters
            .iter()
            .map(|c| (c.name.as_str().into(), c.value()))
            .collect();
        let mut sync = serde_yaml::Mapping::new();
        sync.insert("name".into(), self.sync_name.as_str().into());
        sync.insert("source".into(), self.source.as_str().into());
        sync.insert(
            "targets".into(),
            self.targets
                .iter()
                .map(|t| serde_yaml::Value::from(t.as_str()))
                .collect(),
        );
        sync.insert("keys".into(), self.keys.iter().map(Sel::value).collect());
        if !self.notify.is_empty() {
            sync.insert("notify".into(), self.notify.clone().into());
        }
        let mut plan = serde_yaml::Mapping::new();
        plan.insert("version".into(), 1.into());
        plan.insert("clusters".into(), clusters.into());
        plan.insert("sync".into(), vec![serde_yaml::Value::from(sync)].into());
        if !self.options.is_empty() {
            plan.insert("options".into(), self.options.clone().into());
        }
        if let Some(state) = &self.state {
            plan.insert("state".into(), state.clone());
        }
        plan.into()
    }

    /// The plan as YAML text, the SoftHSM module path filled in.
    pub fn yaml(&self) -> String {
        serde_yaml::to_string(&self.value()).expect("a test plan serializes")
    }
}

impl std::fmt::Display for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.yaml())
    }
}

/// A YAML mapping from `(key, value)` pairs, in order.
pub fn map<const N: usize>(pairs: [(&str, serde_yaml::Value); N]) -> serde_yaml::Value {
    pairs
        .into_iter()
        .map(|(k, v)| (serde_yaml::Value::from(k), v))
        .collect::<serde_yaml::Mapping>()
        .into()
}

/// `inventory`'s handle of every key, by label.
pub fn handles(w: &World, cluster: &str) -> std::collections::HashMap<String, u64> {
    let inv = w.run(&["inventory", "plan.yaml", cluster, "--format", "json"]);
    assert_eq!(inv.code, 0, "{inv:?}");
    inv.json()["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| {
            (
                k["label"].as_str().unwrap_or_default().to_string(),
                k["handle"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

/// The keys of `inventory CLUSTER --format json`, sorted by label and class: (label,
/// class, key type, fingerprint).
pub fn inventory(w: &World, cluster: &str) -> Vec<(String, String, String, Value)> {
    let out = w.run(&["inventory", "plan.yaml", cluster, "--format", "json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let mut keys: Vec<_> = out.json()["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| {
            (
                k["label"].as_str().unwrap_or_default().to_string(),
                k["class"].as_str().unwrap_or_default().to_string(),
                k["key_type"].as_str().unwrap_or_default().to_string(),
                k["fingerprint"].clone(),
            )
        })
        .collect();
    keys.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    keys
}

/// What `probe --format json` found each key-wrap mechanism makes: (id, format code).
pub fn wrap_made(probe: &Value) -> Vec<(u64, String)> {
    probe["wrap_mechanisms"]
        .as_array()
        .expect("wrap_mechanisms")
        .iter()
        .map(|m| {
            (
                m["id"].as_u64().unwrap_or(0),
                m["made"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}
