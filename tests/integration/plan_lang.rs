//! The plan language (issue 3): the corpus of broken plans checked by kind and position,
//! rendered snapshots, JSON diagnostics, schemas, example plans, PIN files and
//! `validate --online` on SoftHSM.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use hsm_sync::plan::{self, PlanError};
use miette::{GraphicalReportHandler, GraphicalTheme, Severity};
use serde_json::Value;

use crate::world::{pair, schema_errors, two_cluster_plan, Pin, Plan, Sel, World};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn corpus_dir() -> PathBuf {
    Path::new(ROOT).join("tests/plans/broken")
}

/// The expectations of a corpus file: `# expect: plan::KIND LINE:COL` lines in its header,
/// or in a sidecar `NAME.expect` for files that cannot hold a comment (the empty file).
fn expectations(path: &Path) -> Vec<String> {
    let sidecar = path.with_extension("expect");
    let text = if sidecar.exists() {
        std::fs::read_to_string(&sidecar).unwrap()
    } else {
        String::from_utf8_lossy(&std::fs::read(path).unwrap()).into_owned()
    };
    text.lines()
        .filter_map(|l| l.trim_start_matches('#').trim().strip_prefix("expect:"))
        .map(|e| e.trim().to_string())
        .collect()
}

/// Every error of a plan as `plan::KIND LINE:COL` (`-` when it has no position), in file order.
/// Offline warnings (a machine's lacks, not a plan's mistakes) count as `warning plan::KIND
/// LINE:COL` when the plan has no error.
fn found(path: &Path) -> Vec<String> {
    let listed = |inv: &hsm_sync::plan::InvalidPlan, severity: Severity, prefix: &str| -> Vec<String> {
        inv.issues
            .iter()
            .filter(|i| i.severity == severity)
            .map(|i| match i.span {
                Some(s) => {
                    let (l, c) = inv.source.line_col(s.offset());
                    format!("{prefix}{} {l}:{c}", i.kind.code())
                }
                None => format!("{prefix}{} -", i.kind.code()),
            })
            .collect()
    };
    match plan::load(path) {
        Ok(loaded) => loaded
            .warnings
            .as_ref()
            .map(|w| listed(w, Severity::Warning, "warning "))
            .unwrap_or_default()
            .into_iter()
            .filter(|w| !w.starts_with("warning plan::pin-file") || !w.contains("readable"))
            .collect(),
        Err(PlanError::Invalid(inv)) => listed(&inv, Severity::Error, ""),
        Err(e) => vec![format!("not a plan error: {e}")],
    }
}

fn corpus() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_broken_plan_fails_with_its_kinds_at_its_positions() {
    std::env::remove_var("HSM_SYNC_CORPUS_UNSET");
    let files = corpus();
    assert!(files.len() >= 40, "the corpus has {} plans", files.len());
    let mut failures = Vec::new();
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for path in &files {
        let mut expected = expectations(path);
        assert!(!expected.is_empty(), "{} has no `# expect:` line", path.display());
        let mut actual = found(path);
        for e in &expected {
            let kind = e.trim_start_matches("warning ").split(' ').next().unwrap_or_default();
            *kinds.entry(kind.to_string()).or_default() += 1;
        }
        expected.sort();
        actual.sort();
        if expected != actual {
            failures.push(format!(
                "{}\n  expected {expected:?}\n  found    {actual:?}",
                path.file_name().unwrap().to_string_lossy()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} plans differ:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
    // Every rule of CONTRACT.md §1 has at least one broken plan.
    for code in [
        "plan::unknown-field",
        "plan::wrong-type",
        "plan::missing-field",
        "plan::duplicate-cluster",
        "plan::duplicate-sync",
        "plan::undefined-cluster",
        "plan::source-in-targets",
        "plan::not-cloned",
        "plan::credential-mismatch",
        "plan::inline-pin",
        "plan::empty-selector",
        "plan::ambiguous-selector",
        "plan::invalid-hex",
        "plan::version",
        "plan::syntax",
        "plan::empty",
        "plan::invalid-glob",
        "plan::invalid-url",
        "plan::invalid-duration",
        "plan::unset-variable",
        "plan::pin-file",
        "plan::clone-cycle",
        "plan::conflicting-state",
    ] {
        assert!(kinds.contains_key(code), "no broken plan covers {code}");
    }
}

/// Renders a plan's diagnostics as a reviewer sees them, without colour, 80 columns wide.
fn render(path: &Path) -> String {
    let err = plan::load(path).expect_err("a broken plan");
    let mut out = String::new();
    GraphicalReportHandler::new_themed(GraphicalTheme::unicode_nocolor())
        .with_width(80)
        .render_report(&mut out, &err)
        .unwrap();
    out
}

#[test]
fn rendered_diagnostics_match_their_snapshots() {
    std::env::remove_var("HSM_SYNC_CORPUS_UNSET");
    let update = std::env::var_os("UPDATE_SNAPSHOTS").is_some();
    let snaps = Path::new(ROOT).join("tests/plans/snapshots");
    let mut stale = Vec::new();
    for name in [
        "many-problems",
        "duplicate-key",
        "inline-pin-string",
        "undefined-source",
        "credential-user-mismatch",
    ] {
        // A relative name, so the snapshot does not depend on where the repository lives.
        let rel = PathBuf::from(format!("tests/plans/broken/{name}.yaml"));
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(cwd, Path::new(ROOT), "cargo runs tests in the package root");
        let got = render(&rel);
        let file = snaps.join(format!("{name}.txt"));
        if update {
            std::fs::write(&file, &got).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&file).unwrap_or_default();
        if want != got {
            stale.push(format!("--- {}\n{got}", file.display()));
        }
    }
    assert!(
        stale.is_empty(),
        "rendered diagnostics changed; review and run with UPDATE_SNAPSHOTS=1:\n{}",
        stale.join("\n")
    );
}

/// `--diagnostics json validate` of a broken plan `text`: exit 1 and one JSON document.
fn validate_json(text: &str) -> Value {
    let w = World::new();
    w.write("plan.yaml", text);
    let out = w.run(&["--diagnostics", "json", "validate", "plan.yaml"]);
    assert_eq!(out.code, 1, "{out:?}");
    serde_json::from_str(out.stderr.trim())
        .unwrap_or_else(|e| panic!("stderr is not one JSON document ({e}):\n{}", out.stderr))
}

#[test]
fn diagnostics_json_gives_codes_and_label_offsets() {
    let text = "version: 1\nclusters:\n  primary:\n    module: /x.so\n    token: { label: p }\n    credentials: { role: crypto-user, user: app, pin: \"1234\" }\nsync:\n  - source: primary\n    tragets: [dr]\n    keys: [{ id: \"01\" }]\n";
    let json = validate_json(text);
    assert_eq!(json["code"], "plan::invalid");
    let related = json["related"].as_array().expect("related diagnostics");
    assert!(related.iter().all(|d| d["filename"] == "plan.yaml"), "{related:#?}");
    let by_code = |code: &str| {
        related
            .iter()
            .find(|d| d["code"] == code)
            .unwrap_or_else(|| panic!("no {code} in {related:#?}"))
    };
    let pin = by_code("plan::inline-pin");
    let span = &pin["labels"][0]["span"];
    let offset = span["offset"].as_u64().unwrap() as usize;
    let len = span["length"].as_u64().unwrap() as usize;
    assert_eq!(&text[offset..offset + len], "\"1234\"");
    assert!(pin["help"].as_str().unwrap().contains("environment variable"), "{pin}");
    let unknown = by_code("plan::unknown-field");
    let offset = unknown["labels"][0]["span"]["offset"].as_u64().unwrap() as usize;
    assert!(text[offset..].starts_with("tragets"), "label on the key");
    assert_eq!(unknown["help"], "did you mean `targets`?");
    assert_eq!(unknown["severity"], "error");
}

#[test]
fn diagnostics_json_gives_each_label_its_line_and_column() {
    // Line 5 has two-byte characters before the label: columns count characters.
    let text = "version: 1\nclusters:\n  primary:\n    module: /x.so\n    token: { label: \"prïmäry\", sreial: \"1\" }\n    credentials: { role: crypto-user, user: app, pin: \"1234\" }\nsync:\n  - source: primary\n    tragets: [dr]\n    keys: [{ id: \"01\" }]\n";
    let json = validate_json(text);
    let related = json["related"].as_array().expect("related diagnostics");
    let span_of = |message: &str| {
        let d = related
            .iter()
            .find(|d| d["message"].as_str().is_some_and(|m| m.contains(message)))
            .unwrap_or_else(|| panic!("no `{message}` in {related:#?}"));
        d["labels"][0]["span"].clone()
    };
    let at = |span: &Value| (span["line"].as_u64(), span["column"].as_u64());
    let serial = span_of("unknown field `sreial`");
    assert_eq!(at(&serial), (Some(5), Some(32)), "{serial}");
    let pin = span_of("a PIN is written in the plan");
    assert_eq!(at(&pin), (Some(6), Some(55)), "{pin}");
    let targets = span_of("unknown field `tragets`");
    assert_eq!(at(&targets), (Some(9), Some(5)), "{targets}");
    // Additive: the byte offsets are still there, and still point at the same text.
    let offset = serial["offset"].as_u64().unwrap() as usize;
    assert!(text[offset..].starts_with("sreial"), "{serial}");
    assert_eq!(serial["length"], 6);
}

#[test]
fn the_schemas_are_generated_from_the_types_and_committed() {
    for kind in ["plan", "report", "saved-plan"] {
        let w = World::new();
        let out = w.run(&["schema", kind]);
        assert_eq!(out.code, 0, "{out:?}");
        let file = Path::new(ROOT).join(format!("schemas/{kind}.schema.json"));
        let committed = std::fs::read_to_string(&file).unwrap();
        assert!(
            committed == out.stdout,
            "{} is stale: run `cargo run -- schema {kind} > schemas/{kind}.schema.json`",
            file.display()
        );
    }
}

fn example_plans() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(Path::new(ROOT).join("plans"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    assert!(files.len() >= 2);
    files
}

#[test]
fn example_plans_carry_the_modeline_match_the_schema_and_validate() {
    let w = World::new();
    for path in example_plans() {
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with("# yaml-language-server: $schema=../schemas/plan.schema.json\n"),
            "{} must start with the yaml-language-server modeline",
            path.display()
        );
        let doc = plan::yaml_to_json(&text).unwrap();
        let errors = schema_errors("plan", &doc);
        assert!(errors.is_empty(), "{}: {errors:#?}", path.display());
        let out = w.run_env(
            &["validate", path.to_str().unwrap()],
            &[("SOFTHSM_MODULE", "/usr/lib/softhsm/libsofthsm2.so")],
        );
        assert_eq!(out.code, 0, "{}: {out:?}", path.display());
    }
}

#[test]
fn the_schema_rejects_what_validation_rejects_by_shape() {
    for name in [
        "unknown-sync-field",
        "wrong-type-role",
        "wrong-type-state",
        "unknown-pin-field",
        "version-2",
        "invalid-cluster-name",
        "invalid-sync-name",
        "bad-hex",
        "odd-hex",
        "url-scheme",
        "url-credentials",
        "wrong-type-handle-negative",
    ] {
        let text = std::fs::read_to_string(corpus_dir().join(format!("{name}.yaml"))).unwrap();
        let doc = plan::yaml_to_json(&text).unwrap();
        assert!(!schema_errors("plan", &doc).is_empty(), "{name} passes the schema");
    }
}

#[test]
fn every_field_of_the_contract_reaches_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let pin = dir.path().join("dr.pin");
    std::fs::write(&pin, "1234\n").unwrap();
    set_mode(&pin, 0o600);
    std::env::set_var("HSM_SYNC_TEST_LIBDIR", "/usr/lib/softhsm");
    let text = "version: 1
clusters:
  primary:
    module: ${HSM_SYNC_TEST_LIBDIR}/libsofthsm2.so
    token:
      label: primary-use1
    credentials:
      role: crypto-user
      user: app-cu
      pin:
        env: PRIMARY_PIN
    lineage:
      domain_key: my-domain
      fingerprint: \"9F2C41D07BE35A18\"
  dr-euw1:
    module: ~/lib/libsofthsm2.so
    token: { serial: \"0123\" }
    cloned_from: primary
    credentials: { role: crypto-user, user: app-cu, pin: { file: ./dr.pin } }
  dr-2:
    module: /x.so
    token: { slot: 7 }
    cloned_from: dr-euw1
    credentials: { role: crypto-user, user: app-cu, pin: { env: DR2_PIN } }
sync:
  - name: payments
    source: primary
    targets: [dr-euw1, dr-2]
    keys:
      - id: \"a1b2c3\"
      - label: \"payments-*\"
      - label: exact-label
      - handle: 261251
      - label: retired-2024
        state: absent
        targets: [dr-euw1]
    notify:
      - name: object-storage
        url: http://127.0.0.1:8080/key-events
        events: [synced]
      - name: audit
        url: https://audit.example/hook
  - source: dr-euw1
    targets: [primary]
    keys: [{ label: \"back-?\" }]
options:
  parallelism: 8
  notify_cooldown: 90s
";
    let path = dir.path().join("plan.yaml");
    std::fs::write(&path, text).unwrap();
    let loaded = plan::load(&path).unwrap_or_else(|e| panic!("{e:?}"));
    // Only this machine's lacks (two module files that are not here) are warned about.
    assert!(
        loaded
            .warnings
            .as_ref()
            .is_none_or(|w| w.issues.iter().all(|i| i.kind.code() == "plan::module-file")),
        "{:?}",
        loaded.warnings
    );
    let p = loaded.plan;
    let home = std::env::var("HOME").unwrap();
    assert_eq!(p.clusters.len(), 3);
    let primary = p.cluster("primary").unwrap();
    assert_eq!(primary.module, Path::new("/usr/lib/softhsm/libsofthsm2.so"));
    assert_eq!(primary.token, plan::TokenRef::Label("primary-use1".into()));
    assert_eq!(primary.domain_key, "my-domain");
    assert_eq!(primary.fingerprint.as_deref(), Some("9f2c41d07be35a18"));
    assert_eq!(primary.credentials.role, plan::Role::CryptoUser);
    let dr = p.cluster("dr-euw1").unwrap();
    assert_eq!(dr.module, Path::new(&format!("{home}/lib/libsofthsm2.so")));
    assert_eq!(dr.token, plan::TokenRef::Serial("0123".into()));
    assert_eq!(dr.credentials.pin, hsm_sync::credentials::PinSource::File(pin.clone()));
    assert_eq!(dr.domain_key, plan::DEFAULT_DOMAIN_KEY);
    assert_eq!(p.cluster("dr-2").unwrap().token, plan::TokenRef::Slot(7));

    let s = &p.syncs[0];
    assert_eq!(s.name, "payments");
    assert_eq!(s.targets, ["dr-euw1", "dr-2"]);
    let m: Vec<String> = s.selectors.iter().map(|x| x.matcher.describe()).collect();
    assert_eq!(
        m,
        [
            "id:a1b2c3",
            "label:payments-*",
            "label:exact-label",
            "handle:261251",
            "label:retired-2024"
        ]
    );
    assert!(matches!(s.selectors[1].matcher, plan::KeyMatcher::LabelGlob(..)));
    assert!(matches!(s.selectors[2].matcher, plan::KeyMatcher::Label(..)));
    assert_eq!(s.selectors[0].state, plan::DesiredState::Present);
    assert_eq!(s.selectors[0].targets, ["dr-euw1", "dr-2"]);
    assert_eq!(s.selectors[4].state, plan::DesiredState::Absent);
    assert_eq!(s.selectors[4].targets, ["dr-euw1"]);
    assert_eq!(s.notify[0].events, [plan::Event::Synced]);
    assert_eq!(s.notify[1].events, [plan::Event::Synced, plan::Event::Deleted]);
    assert_eq!(s.notify[1].url, "https://audit.example/hook");
    // A clone may be the source of a sync back to its original (lineage is undirected).
    assert_eq!(p.syncs[1].name, "sync-2");
    assert_eq!(p.options.parallelism, Some(8));
    assert_eq!(p.options.notify_cooldown, std::time::Duration::from_secs(90));
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn pin_files_must_exist_and_loose_ones_are_warned_about() {
    let w = pair();
    // Text, not a `Plan`: the warning's `plan.yaml:11:` below is a line of this very text.
    let plan = two_cluster_plan("      - id: \"01\"\n");
    let w = w.plan(&plan);
    // Both PIN files exist (the fixture writes them); make them private first.
    set_mode(&w.path().join("primary.pin"), 0o600);
    set_mode(&w.path().join("dr.pin"), 0o600);
    let out = w.run(&["validate", "plan.yaml"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(!out.stderr.contains("readable by group"), "{}", out.stderr);

    set_mode(&w.path().join("dr.pin"), 0o644);
    let out = w.run(&["validate", "plan.yaml"]);
    assert_eq!(out.code, 0, "a loose PIN file is a warning, not an error: {out:?}");
    assert!(out.stderr.contains("plan::pin-file"), "{}", out.stderr);
    assert!(out.stderr.contains("is readable by group or others"), "{}", out.stderr);
    // A warning alone is not a "problem" under an error mark (issue 16).
    assert!(out.stderr.contains("plan.yaml has 1 warning"), "{}", out.stderr);
    assert!(!out.stderr.contains('×'), "{}", out.stderr);
    assert!(out.stderr.contains("chmod 600"), "{}", out.stderr);
    assert!(
        out.stderr.contains("plan.yaml:11:"),
        "the warning points at the PIN file: {}",
        out.stderr
    );

    // A missing PIN file is this machine's lack: a warning offline (a lint job has no
    // secrets), an error online (CONTRACT.md §1).
    std::fs::remove_file(w.path().join("dr.pin")).unwrap();
    let out = w.run(&["validate", "plan.yaml"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("cannot read PIN file"), "{}", out.stderr);
    assert!(out.stderr.contains("plan.yaml:11:"), "{}", out.stderr);
    let online = w.run(&["validate", "plan.yaml", "--online"]);
    assert_eq!(online.code, 1, "{online:?}");
    assert!(online.stderr.contains("cannot go online"), "{}", online.stderr);
    assert!(online.stderr.contains("cannot read PIN file"), "{}", online.stderr);
}

#[test]
fn an_inline_pin_is_refused_and_told_where_pins_go() {
    let w = World::new().plan(
        &Plan::two_clusters()
            .select(Sel::id("01"))
            .pin("dr", Pin::Literal("1234".into())),
    );
    let out = w.run(&["validate", "plan.yaml"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("plan::inline-pin"), "{}", out.stderr);
    assert!(out.stderr.contains("pin: {env: VAR}"), "{}", out.stderr);
    assert!(out.stderr.contains("pin: {file: ./x.pin}"), "{}", out.stderr);
    assert!(!out.stdout.contains("1234"));
}

#[test]
fn validate_online_logs_in_and_proves_lineage_without_writing() {
    let w = pair()
        .key("primary", "a1", "pay", &["--count", "3"])
        .plan(&Plan::two_clusters().select(Sel::label("pay-*")));
    let before = (w.count("primary"), w.count("dr"));
    let offline = w.run(&["validate", "plan.yaml"]);
    assert_eq!(offline.code, 0, "{offline:?}");
    assert!(!offline.stdout.contains("lineage proven"), "offline does not log in");

    let out = w.run(&["validate", "plan.yaml", "--online"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("logged in to 2 cluster(s)"), "{}", out.stdout);
    assert_eq!(
        out.stdout.matches("lineage proven: primary → dr").count(),
        1,
        "{}",
        out.stdout
    );
    assert_eq!((w.count("primary"), w.count("dr")), before, "validate writes nothing");
}

#[test]
fn validate_online_fails_on_a_target_of_another_lineage() {
    let w = World::new()
        .tokens(&["primary", "dr"])
        .domain_key(&["primary"])
        .domain_key(&["dr"])
        .plan(&Plan::two_clusters().select(Sel::id("01")));
    let before = w.count("dr");
    assert_eq!(w.run(&["validate", "plan.yaml"]).code, 0, "offline it is valid");
    let out = w.run(&["validate", "plan.yaml", "--online"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.to_lowercase().contains("lineage"), "{}", out.stderr);
    assert_eq!(w.count("dr"), before);
}

#[test]
fn validate_online_logs_in_once_per_cluster_however_many_pairs() {
    let w = World::new()
        .tokens(&["primary", "dr", "dr2"])
        .domain_key(&["primary", "dr", "dr2"])
        .key("primary", "01", "pay", &["--count", "2"]);
    let plan = "version: 1
clusters:
  primary:
    module: {shim}
    token: { label: primary }
    credentials: { role: crypto-user, user: app, pin: { file: ./primary.pin } }
  dr:
    module: {shim}
    token: { label: dr }
    cloned_from: primary
    credentials: { role: crypto-user, user: app, pin: { file: ./dr.pin } }
  dr2:
    module: {shim}
    token: { label: dr2 }
    cloned_from: dr
    credentials: { role: crypto-user, user: app, pin: { file: ./dr2.pin } }
sync:
  - source: primary
    targets: [dr, dr2]
    keys: [{ label: \"pay-*\" }]
  - source: dr
    targets: [dr2]
    keys: [{ id: \"01\" }]
";
    w.write(
        "plan.yaml",
        &plan.replace("{shim}", &crate::world::shim().display().to_string()),
    );
    let counts = |w: &World| ["primary", "dr", "dr2"].map(|t| w.count(t));
    let before = counts(&w);
    let log = w.path().join("calls.log");
    let softhsm = crate::world::softhsm();
    let out = w.run_env(
        &["validate", "plan.yaml", "--online"],
        &[
            ("HSM_SYNC_SHIM_TARGET", softhsm.to_str().unwrap()),
            ("HSM_SYNC_SHIM_LOG", log.to_str().unwrap()),
        ],
    );
    assert_eq!(out.code, 0, "{out:?}");
    for pair in ["primary → dr ", "primary → dr2 ", "dr → dr2 "] {
        assert!(
            out.stdout.contains(&format!("lineage proven: {pair}")),
            "{pair}: {}",
            out.stdout
        );
    }
    let calls = std::fs::read_to_string(&log).unwrap();
    let logins = calls.lines().filter(|l| l.starts_with("C_Login ")).count();
    assert_eq!(logins, 3, "one login per cluster:\n{calls}");
    // Nothing is written: the proofs and the probe use session objects only (created and
    // destroyed in the session; the probe's Ed25519 pair too, by C_GenerateKeyPair), no
    // object is changed or copied, and the token objects stay as they were.
    for f in ["C_SetAttributeValue", "C_CopyObject"] {
        assert!(
            !calls.lines().any(|l| l.starts_with(&format!("{f} "))),
            "{f} called:\n{calls}"
        );
    }
    assert_eq!(counts(&w), before, "token objects unchanged");
}

#[test]
fn pin_file_paths_expand_variables_and_home() {
    let w = pair();
    // Text, not a `Plan`: the warning's `plan.yaml:11:` below is a line of this very text.
    let plan = two_cluster_plan("      - id: \"01\"\n")
        .replace("{ file: ./primary.pin }", "{ file: ~/primary.pin }")
        .replace("{ file: ./dr.pin }", "{ file: \"${PIN_DIR}/dr.pin\" }");
    let w = w.plan(&plan);
    set_mode(&w.path().join("primary.pin"), 0o600);
    set_mode(&w.path().join("dr.pin"), 0o600);
    let dir = w.path().to_str().unwrap().to_string();
    let out = w.run_env(
        &["validate", "plan.yaml", "--online"],
        &[("HOME", &dir), ("PIN_DIR", &dir)],
    );
    assert_eq!(out.code, 0, "the expanded PIN files log in: {out:?}");

    // Unset, the variable is a warning offline and an error online.
    let out = w.run_env(&["validate", "plan.yaml"], &[("HOME", &dir)]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("plan::unset-variable"), "{}", out.stderr);
    assert!(out.stderr.contains("`PIN_DIR` is not set"), "{}", out.stderr);
    assert!(out.stderr.contains("plan.yaml:11:"), "{}", out.stderr);
    let online = w.run_env(&["validate", "plan.yaml", "--online"], &[("HOME", &dir)]);
    assert_eq!(online.code, 1, "{online:?}");
    assert!(online.stderr.contains("`PIN_DIR` is not set"), "{}", online.stderr);
}

#[test]
fn help_lines_suggest_the_fix() {
    let help = |name: &str| -> Vec<String> {
        match plan::load(&corpus_dir().join(format!("{name}.yaml"))) {
            Err(PlanError::Invalid(inv)) => inv.issues.iter().filter_map(|i| i.help.clone()).collect(),
            other => panic!("{name}: {other:?}"),
        }
    };
    assert_eq!(help("unknown-sync-field"), ["did you mean `targets`?"]);
    assert_eq!(help("unknown-top-field"), ["did you mean `options`?"]);
    assert_eq!(help("unknown-pin-field"), ["did you mean `env`?"]);
    assert_eq!(help("wrong-type-role"), ["did you mean `crypto-user`?"]);
    assert_eq!(help("undefined-source"), ["did you mean `primary`?"]);
    assert_eq!(help("undefined-selector-target"), ["defined clusters: primary, dr"]);
    assert!(help("not-cloned")[0].contains("add `cloned_from: primary` to cluster `dr`"));
    assert!(help("bad-duration")[0].contains("`90s`"));
    assert!(help("missing-module")[0].contains("add `module:`"));
    assert!(help("wrong-type-unquoted-id")[0].ends_with("quote it to keep it as text: \"123456\""));
}
