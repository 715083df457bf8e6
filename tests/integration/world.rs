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

/// testkit's `hsm-fixture` helper, built once per test process. It runs in a process of
/// its own because SoftHSM reads one `SOFTHSM2_CONF` per process: the test process cannot
/// load the tokens of every test itself.
pub fn fixture_bin() -> PathBuf {
    static FIXTURE: OnceLock<PathBuf> = OnceLock::new();
    FIXTURE.get_or_init(testkit::build::fixture).clone()
}

/// One test's token directory, plan and runs.
pub struct World {
    dir: tempfile::TempDir,
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
        World { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Runs `hsm-fixture DIR args…`, returning stdout; panics on failure.
    pub fn fixture(&self, args: &[&str]) -> String {
        let out = Command::new(fixture_bin())
            .arg(self.path())
            .args(args)
            .output()
            .expect("hsm-fixture runs");
        assert!(
            out.status.success(),
            "hsm-fixture {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub fn tokens(self, names: &[&str]) -> Self {
        let mut args = vec!["init"];
        args.extend_from_slice(names);
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

    /// Writes `plan.yaml`; `{module}` is replaced by the SoftHSM module path.
    pub fn plan(self, yaml: &str) -> Self {
        self.write("plan.yaml", &yaml.replace("{module}", &softhsm().display().to_string()));
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
        let out = Command::new(env!("CARGO_BIN_EXE_hsm-sync"))
            .args(args)
            .current_dir(cwd)
            .env("SOFTHSM2_CONF", self.path().join("softhsm2.conf"))
            .env("NO_COLOR", "1")
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
pub fn cluster_yaml(name: &str, from: Option<&str>) -> String {
    let cloned = from.map(|f| format!("    cloned_from: {f}\n")).unwrap_or_default();
    format!(
        "  {name}:\n    module: {{module}}\n    token: {{ label: {name} }}\n{cloned}    credentials: {{ role: crypto-user, user: app, pin: {{ file: ./{name}.pin }} }}\n"
    )
}

/// A two-cluster plan: `primary` → `dr`, crypto-user `app`, PINs from files.
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
