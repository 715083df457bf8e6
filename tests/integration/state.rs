//! Where state lives (issue 15, CONTRACT.md §6): what each backend keeps where, the
//! upgrade from per-key records, the fingerprint cache of tokens with CKA_UNIQUE_ID, and
//! the postgres backend's failures, on real tokens and a real PostgreSQL.

use crate::world::*;

/// Counts the lines of a `-vv` run that trace `call`.
fn calls(stderr: &str, call: &str) -> usize {
    stderr.lines().filter(|l| l.contains(call)).count()
}

/// Earlier versions kept one data object per key. They are still read (notify refuses
/// within their cooldown), and the first apply that compacts moves them into one page,
/// saying so; nothing is lost.
#[test]
fn per_key_records_of_earlier_versions_are_read_then_moved_into_one_page() {
    let w = pair()
        .key("primary", "a1", "pay", &["--count", "20"])
        .plan(&Plan::two_clusters().select(Sel::label("pay-*")).sync_name("payments"));
    w.fixture(&["legacy-state", "primary", "--sync", "payments", "--targets", "dr"]);
    assert_eq!(
        w.fixture(&["count", "primary", "--data"]),
        "20",
        "one object per key, as before"
    );
    let n = w.run(&["notify", "plan.yaml"]);
    assert_eq!(n.code, 4, "the old records are read: {n:?}");
    assert_eq!(n.stderr.matches("was synced at").count(), 20, "{}", n.stderr);

    let a = w.run(&["apply", "plan.yaml"]);
    assert_eq!(a.code, 0, "{a:?}");
    assert!(
        a.stderr
            .contains("moved 20 per-key lifecycle record(s) written by an earlier hsm-sync on `primary` into one page; nothing was lost"),
        "{}",
        a.stderr
    );
    assert_eq!(w.fixture(&["count", "primary", "--data"]), "1", "one page");
    let n = w.run(&["notify", "plan.yaml"]);
    assert_eq!(n.code, 4, "{n:?}");
    assert_eq!(
        n.stderr.matches("was synced at").count(),
        20,
        "every key still has its record"
    );
    let again = w.run(&["apply", "plan.yaml"]);
    assert!(!again.stderr.contains("moved"), "migrated once: {}", again.stderr);
}

/// A Kryoptic target (CKA_UNIQUE_ID) under a `state` backend: the first plan wraps every
/// key for its fingerprint and caches it by unique id; the next plan wraps none of the
/// target's keys and finds the same; `--refresh` wraps them all again.
fn the_cache_spares_the_wraps(state: Option<&str>) {
    let mut p = Plan::two_clusters().select(Sel::label("*")).kryoptic("dr");
    if let Some(dir) = state {
        p = p.state_file(dir);
    }
    let w = World::new()
        .tokens(&["primary", "dr@kryoptic"])
        .domain_key(&["primary", "dr"])
        .key("primary", "a1", "aes", &["--count", "12"])
        .plan(&p);
    let a = w.run(&["apply", "plan.yaml"]);
    assert_eq!(a.code, 0, "{a:?}");
    let plan = |extra: &[&str]| {
        let mut args = vec!["-vv", "plan", "plan.yaml", "--format", "json"];
        args.extend_from_slice(extra);
        let o = w.run(&args);
        assert_eq!(o.code, 0, "{o:?}");
        assert_eq!(o.report().summary.unchanged, 12, "{}", o.stdout);
        // One attribute read per key on both tokens (dr's unique id comes in the same
        // call), plus the few of login and lineage.
        let reads = calls(&o.stderr, "C_GetAttributeValue");
        assert!(reads <= 2 * 12 + 6, "{reads} attribute reads for 2 × 12 keys");
        calls(&o.stderr, "C_WrapKey")
    };
    // On the token backend only an apply writes the cache (plan writes no token).
    if state.is_some() {
        plan(&[]);
    } else {
        assert_eq!(w.run(&["apply", "plan.yaml"]).code, 0);
    }
    let cached = plan(&[]);
    let refreshed = plan(&["--refresh"]);
    assert!(
        refreshed >= cached + 12,
        "12 keys on dr not wrapped again with the cache: {cached} wraps vs {refreshed} with --refresh"
    );
    let after = plan(&[]);
    assert_eq!(after, cached, "the refresh cached them again");
}

#[test]
fn the_file_backend_caches_fingerprints_by_unique_id_and_refresh_ignores_it() {
    the_cache_spares_the_wraps(Some("state"));
}

#[test]
fn the_token_backend_caches_fingerprints_on_the_token_after_an_apply() {
    the_cache_spares_the_wraps(None);
}

/// The state block's mistakes are diagnostics at their YAML span, never a connection.
#[test]
fn a_connection_string_in_the_plan_is_refused_at_its_span() {
    let w = pair().plan(&Plan::two_clusters().select(Sel::label("*")));
    let base = w.read("plan.yaml");
    for (block, code, what) in [
        (
            "state:\n  backend: postgres\n  url: postgresql://u:hunter2@db/x\n",
            "plan::inline-url",
            "state.url",
        ),
        (
            "state:\n  backend: postgres\n  url_env: postgresql://u:hunter2@db/x\n",
            "plan::inline-url",
            "url_env",
        ),
        ("state:\n  backend: file\n", "plan::missing-field", "needs `path`"),
        (
            "state:\n  backend: postgress\n",
            "plan::invalid-value",
            "did you mean `postgres`?",
        ),
        (
            "state:\n  backend: token\n  path: ./s\n",
            "plan::invalid-value",
            "`path` is for the `file` backend",
        ),
    ] {
        w.write("bad.yaml", &format!("{base}{block}"));
        let v = w.run(&["validate", "bad.yaml", "--diagnostics", "json"]);
        assert_eq!(v.code, 1, "{block}: {v:?}");
        assert!(v.stderr.contains(code), "{block}: {}", v.stderr);
        assert!(
            v.stderr.contains(what) || v.stderr.contains("connection string"),
            "{block}: {}",
            v.stderr
        );
        assert!(!v.stdout.contains("hunter2"), "{block}: {}", v.stdout);
    }
}

/// A postgres plan's world: `primary` with keys, `dr` empty, the plan naming
/// `HSM_SYNC_STATE_URL`; the runs get `url` there.
fn postgres_world() -> World {
    let w = pair()
        .key("primary", "a1", "pay", &["--count", "3"])
        .plan(&Plan::two_clusters().select(Sel::label("pay-*")));
    let text = w.read("plan.yaml");
    w.write(
        "plan.yaml",
        &format!("{text}state:\n  backend: postgres\n  url_env: {STATE_URL_ENV}\n"),
    );
    w
}

/// CONTRACT.md §6: a database that is down, or refuses the password, fails the run with
/// exit 1 naming the backend, before anything is written to any token; neither the URL
/// nor its password is printed.
#[test]
fn a_database_that_is_down_or_refuses_the_password_stops_the_run_before_any_write() {
    let server = testkit::pg::server();
    let w = postgres_world();
    let good = server.database("refused");
    for (url, why) in [
        (testkit::pg::nowhere_url(), "down"),
        (server.wrong_password(&good), "password authentication failed"),
    ] {
        let before = (
            w.count("dr"),
            w.fixture(&["count", "primary", "--data"]),
            w.fixture(&["count", "dr", "--data"]),
        );
        for args in [
            &["apply", "plan.yaml", "--report", "r.json"][..],
            &["validate", "plan.yaml", "--online"][..],
            &["notify", "plan.yaml"][..],
        ] {
            let o = w.run_env(args, &[(STATE_URL_ENV, &url)]);
            assert_eq!(o.code, 1, "{args:?} with the server {why}: {o:?}");
            assert!(
                o.stderr.contains("postgres state backend (HSM_SYNC_STATE_URL)"),
                "{args:?}: {}",
                o.stderr
            );
            let password = url.split(':').nth(2).and_then(|p| p.split('@').next()).unwrap_or("?");
            for out in [&o.stdout, &o.stderr] {
                assert!(
                    !out.contains(&url) && !out.contains(password),
                    "{args:?}: the URL or its password was printed: {out}"
                );
            }
        }
        if why != "down" {
            let o = w.run_env(&["apply", "plan.yaml"], &[(STATE_URL_ENV, &url)]);
            assert!(o.stderr.contains(why), "the server's reason is said: {}", o.stderr);
        }
        let after = (
            w.count("dr"),
            w.fixture(&["count", "primary", "--data"]),
            w.fixture(&["count", "dr", "--data"]),
        );
        assert_eq!(before, after, "nothing written to any token");
        assert!(
            !w.path().join("r.json").exists(),
            "no report of a run that never started"
        );
    }
    let unset = w.run(&["apply", "plan.yaml"]);
    assert_eq!(unset.code, 1, "{unset:?}");
    assert!(unset.stderr.contains("HSM_SYNC_STATE_URL"), "{}", unset.stderr);
}

/// The connection string and its password never reach stdout, stderr, the report, a
/// saved plan or a token; the records and locks are in the database, not on the tokens.
#[test]
fn the_connection_string_never_reaches_any_output_and_the_tokens_hold_no_state() {
    let server = testkit::pg::server();
    let w = postgres_world();
    let url = server.database("secret");
    let env = [(STATE_URL_ENV, url.as_str())];
    let v = w.run_env(&["validate", "plan.yaml", "--online"], &env);
    assert_eq!(v.code, 0, "{v:?}");
    assert!(
        v.stdout.contains("state: postgres ($HSM_SYNC_STATE_URL), connected"),
        "{}",
        v.stdout
    );
    let p = w.run_env(&["plan", "plan.yaml", "--out", "saved.json"], &env);
    assert_eq!(p.code, 0, "{p:?}");
    let a = w.run_env(&["-vv", "apply", "saved.json", "--report", "r.json"], &env);
    assert_eq!(a.code, 0, "{a:?}");
    let n = w.run_env(&["notify", "plan.yaml"], &env);
    assert_eq!(n.code, 4, "the apply's events are in the database: {n:?}");
    let files = [w.read("saved.json"), w.read("r.json")];
    for text in [
        &v.stdout, &v.stderr, &p.stdout, &p.stderr, &a.stdout, &a.stderr, &n.stdout, &n.stderr, &files[0], &files[1],
    ] {
        assert!(!text.contains(&url), "the URL leaked: {text}");
        assert!(!text.contains(server.password()), "the password leaked: {text}");
    }
    assert_eq!(
        w.fixture(&["count", "primary", "--data"]),
        "0",
        "no record on the source"
    );
    assert_eq!(
        w.fixture(&["count", "dr", "--data"]),
        "0",
        "no journal left on the target"
    );
    assert_eq!(w.count("dr"), 3);
}
