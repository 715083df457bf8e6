//! Associated-resource notifications (CONTRACT.md §5, issue 5) against a real HTTP
//! server on 127.0.0.1 started by each test, and real SoftHSM tokens.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::world::{assert_schema, cluster_yaml, map, ClusterSpec, Output, Plan, Report, Sel, World};
use hsm_sync::domain::event::Event;
use hsm_sync::report::DeliveryStatus;
use serde_yaml::Value as YamlValue;

/// The body of CONTRACT.md §5, read as typed data.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct Body {
    event: String,
    key: Key,
    source: String,
    targets: Vec<String>,
    sync: String,
    at: String,
    renotify: bool,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct Key {
    id: String,
    label: String,
    class: Option<String>,
    key_type: Option<String>,
    fingerprint: Option<String>,
}

/// One request the hook received.
#[derive(Debug, Clone)]
struct Got {
    body: Body,
    authorization: Option<String>,
}

/// How the hook answers.
#[derive(Clone, Copy)]
enum Answer {
    Status(u16),
    /// Reads the request and never answers (the connection stays open).
    Never,
}

/// A tiny HTTP endpoint on 127.0.0.1 that records what it is sent; stops when dropped.
struct Hook {
    url: String,
    got: Arc<Mutex<Vec<Got>>>,
    /// The status it answers with (`Answer::Status`), changed by [`Hook::answer`].
    status: Arc<AtomicU16>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Hook {
    fn start(answer: Answer) -> Hook {
        let server = tiny_http::Server::http("127.0.0.1:0").expect("bind 127.0.0.1");
        let port = server.server_addr().to_ip().expect("an IP address").port();
        let got = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let status = Arc::new(AtomicU16::new(match answer {
            Answer::Status(code) => code,
            Answer::Never => 0,
        }));
        let (g, s, code) = (got.clone(), stop.clone(), status.clone());
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            while !s.load(Ordering::SeqCst) {
                let Ok(Some(mut req)) = server.recv_timeout(Duration::from_millis(50)) else {
                    continue;
                };
                let mut text = String::new();
                let _ = req.as_reader().read_to_string(&mut text);
                let authorization = req
                    .headers()
                    .iter()
                    .find(|h| h.field.equiv("Authorization"))
                    .map(|h| h.value.as_str().to_string());
                let body: Body =
                    serde_json::from_str(&text).unwrap_or_else(|e| panic!("body is not the §5 shape ({e}): {text}"));
                g.lock().unwrap().push(Got { body, authorization });
                match answer {
                    Answer::Status(_) => {
                        let _ = req.respond(tiny_http::Response::empty(code.load(Ordering::SeqCst)));
                    }
                    Answer::Never => held.push(req),
                }
            }
        });
        Hook {
            url: format!("http://127.0.0.1:{port}/key-events"),
            got,
            status,
            stop,
            thread: Some(thread),
        }
    }

    fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }

    fn bodies(&self) -> Vec<Body> {
        self.got().into_iter().map(|g| g.body).collect()
    }

    /// From now on, answers with `code`.
    fn answer(&self, code: u16) {
        self.status.store(code, Ordering::SeqCst);
    }

    fn clear(&self) {
        self.got.lock().unwrap().clear();
    }
}

impl Drop for Hook {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The payments plan: `primary` → `dr`, `dr2`, keys `pay-*`, one notify resource
/// `object-storage` at `url` with `fields` after its name and URL, and
/// `options.notify_cooldown: COOLDOWN`.
fn payments(url: &str, fields: &[(&str, YamlValue)], cooldown: &str) -> Plan {
    let resource: serde_yaml::Mapping = [("name", "object-storage".into()), ("url", url.into())]
        .into_iter()
        .chain(fields.iter().cloned())
        .map(|(k, v)| (YamlValue::from(k), v))
        .collect();
    Plan::two_clusters()
        .cluster(ClusterSpec::new("dr2").cloned_from("primary"))
        .sync_name("payments")
        .targets(&["dr", "dr2"])
        .select(Sel::label("pay-*"))
        .notify(resource.into())
        .option("notify_cooldown", cooldown.into())
}

/// Tokens `primary`, `dr`, `dr2` (clones), `keys` AES keys `pay-*` on `primary`, and `plan`.
fn world(keys: usize, plan: &Plan) -> World {
    World::new()
        .tokens(&["primary", "dr", "dr2"])
        .domain_key(&["primary", "dr", "dr2"])
        .key("primary", "a1", "pay", &["--count", &keys.to_string()])
        .plan(plan)
}

/// The text form of the payments world, `extra` lines for the resource (indented 8) and
/// `options` (indented 2): only for the one test that checks its plan's text.
fn world_text(keys: usize, url: &str, resource: &str, options: &str) -> World {
    let w = World::new()
        .tokens(&["primary", "dr", "dr2"])
        .domain_key(&["primary", "dr", "dr2"])
        .key("primary", "a1", "pay", &["--count", &keys.to_string()]);
    w.plan(&format!(
        "version: 1
clusters:
{}{}{}sync:
  - name: payments
    source: primary
    targets: [dr, dr2]
    keys:
      - label: \"pay-*\"
    notify:
      - name: object-storage
        url: {url}
{resource}options:
{options}",
        cluster_yaml("primary", None),
        cluster_yaml("dr", Some("primary")),
        cluster_yaml("dr2", Some("primary"))
    ))
}

/// A report file, checked against `schemas/report.schema.json`.
fn report(w: &World, name: &str) -> Report {
    assert_schema("report", &w.json(name), name);
    w.report(name)
}

/// Runs hsm-sync from `cwd` (not the world's directory) with the world's SoftHSM config.
fn run_in(w: &World, cwd: &Path, args: &[&str]) -> Output {
    w.run_in(cwd, args, &[])
}

#[test]
fn apply_announces_each_synced_key_once_with_its_targets() {
    let hook = Hook::start(Answer::Status(204));
    let secret = "tok-9f8e7d6c5b4a-never-printed";
    let w = world(2, &payments(&hook.url, &[("bearer_env", "HOOK_TOKEN".into())], "1h"));
    let a = w.run_env(&["apply", "plan.yaml", "--report", "r.json"], &[("HOOK_TOKEN", secret)]);
    assert_eq!(a.code, 0, "{a:?}");
    assert!(a.stdout.contains("Notifications: 2 sent, 0 failed"), "{}", a.stdout);

    let mut got = hook.got();
    got.sort_by(|x, y| x.body.key.label.cmp(&y.body.key.label));
    assert_eq!(got.len(), 2, "one notification per key, not per target: {got:#?}");
    for (g, label) in got.iter().zip(["pay-0", "pay-1"]) {
        assert_eq!(g.authorization.as_deref(), Some(format!("Bearer {secret}").as_str()));
        let b = &g.body;
        assert_eq!(b.event, "synced");
        assert_eq!(b.key.label, label);
        assert!(b.key.id.starts_with("a1"), "{b:?}");
        assert_eq!(b.key.class.as_deref(), Some("secret-key"));
        assert_eq!(b.key.key_type.as_deref(), Some("aes"));
        assert_eq!(b.key.fingerprint.as_ref().map(String::len), Some(16));
        assert_eq!(b.source, "primary");
        assert_eq!(b.targets, ["dr", "dr2"]);
        assert_eq!(b.sync, "payments");
        assert!(!b.renotify);
        let at = humantime::parse_rfc3339(&b.at).expect("`at` is RFC 3339 UTC");
        assert!(at.elapsed().unwrap_or_default() < Duration::from_secs(120));
    }

    let r = report(&w, "r.json");
    let n = &r.notifications;
    assert_eq!(n.len(), 2, "{r:#?}");
    for x in n {
        assert_eq!(x.status, DeliveryStatus::Sent);
        assert_eq!(x.http_status, Some(204));
        assert_eq!(x.resource, "object-storage");
        assert_eq!(x.event, Event::Synced);
        assert_eq!(x.sync, "payments");
    }
    let text = format!("{}{}{}", a.stdout, a.stderr, w.read("r.json"));
    assert!(!text.contains(secret), "the bearer token leaked");

    // The state objects on the source are not keys: inventories and the diff ignore them.
    let inv = w.run(&["inventory", "plan.yaml", "primary", "--format", "json"]).json();
    assert_eq!(inv["keys"].as_array().map(Vec::len), Some(2), "{inv:#}");
    let p = w.run(&["plan", "plan.yaml", "--detailed-exitcode"]);
    assert_eq!(p.code, 0, "no changes after apply: {p:?}");

    // Nothing changed, nothing announced.
    hook.clear();
    let again = w.run_env(&["apply", "plan.yaml"], &[("HOOK_TOKEN", secret)]);
    assert_eq!(again.code, 0, "{again:?}");
    assert!(hook.got().is_empty());
}

#[test]
fn notify_within_the_cooldown_is_refused_even_from_a_fresh_directory() {
    let hook = Hook::start(Answer::Status(204));
    let w = world(1, &payments(&hook.url, &[], "1h"));
    assert_eq!(w.run(&["apply", "plan.yaml"]).code, 0);
    assert_eq!(hook.bodies().len(), 1);
    hook.clear();

    let n = w.run(&["notify", "plan.yaml"]);
    assert_eq!(n.code, 4, "{n:?}");
    assert!(n.stderr.contains("was synced at"), "{}", n.stderr);
    assert!(n.stderr.contains("cannot be performed until"), "{}", n.stderr);

    // Another working directory with no local files: the state lives on the token.
    let fresh = tempfile::tempdir().expect("tempdir");
    let plan = w.path().join("plan.yaml");
    let n2 = run_in(
        &w,
        fresh.path(),
        &["notify", plan.to_str().unwrap(), "--key", "label:pay-*"],
    );
    assert_eq!(n2.code, 4, "{n2:?}");
    assert!(n2.stderr.contains("cannot be performed until"), "{}", n2.stderr);
    assert_eq!(
        std::fs::read_dir(fresh.path()).unwrap().count(),
        0,
        "nothing written locally"
    );
    assert!(hook.got().is_empty(), "nothing sent while refused");
}

#[test]
fn notify_resends_once_the_cooldown_has_passed() {
    let hook = Hook::start(Answer::Status(200));
    let secret = "renotify-token-5e7a91";
    let env = [("HOOK_TOKEN", secret)];
    let w = world(2, &payments(&hook.url, &[("bearer_env", "HOOK_TOKEN".into())], "3s"));
    assert_eq!(w.run_env(&["apply", "plan.yaml"], &env).code, 0);
    let first = hook.bodies();
    assert_eq!(first.len(), 2);
    hook.clear();
    assert_eq!(w.run_env(&["notify", "plan.yaml"], &env).code, 4);
    std::thread::sleep(Duration::from_millis(3300));

    let n = w.run_env(
        &["notify", "plan.yaml", "--key", "label:pay-1", "--report", "n.json"],
        &env,
    );
    assert_eq!(n.code, 0, "{n:?}");
    let auth = hook.got().into_iter().map(|g| g.authorization).collect::<Vec<_>>();
    assert_eq!(auth, [Some(format!("Bearer {secret}"))]);
    let text = format!("{}{}{}", n.stdout, n.stderr, w.read("n.json"));
    assert!(!text.contains(secret), "the bearer token leaked");
    let again = hook.bodies();
    assert_eq!(again.len(), 1, "{again:#?}");
    let orig = first.iter().find(|b| b.key.label == "pay-1").expect("pay-1 announced");
    assert_eq!(again[0].event, "synced", "the event kind stays");
    assert!(again[0].renotify);
    assert_eq!(again[0].at, orig.at, "a re-sent event keeps its time");
    assert_eq!(again[0].key, orig.key);
    let r = report(&w, "n.json");
    assert_eq!(r.command, "notify");
    assert_eq!(r.notifications[0].status, DeliveryStatus::Sent);

    // Now pay-1 was notified: refused again, naming that.
    let n = w.run_env(&["notify", "plan.yaml", "--sync", "payments"], &env);
    assert_eq!(n.code, 4, "{n:?}");
    assert!(n.stderr.contains("was notified at"), "{}", n.stderr);
    assert_eq!(hook.bodies().len(), 1, "nothing more sent");
}

#[test]
fn a_failing_endpoint_is_reported_and_never_undoes_the_sync() {
    let hook = Hook::start(Answer::Status(500));
    let w = world(1, &payments(&hook.url, &[("retries", 1.into())], "1h"));
    let a = w.run(&["apply", "plan.yaml", "--report", "r.json"]);
    assert_eq!(a.code, 3, "{a:?}");
    assert!(a.stderr.contains("notification failed"), "{}", a.stderr);
    let r = report(&w, "r.json");
    let n = &r.notifications[0];
    assert_eq!(n.status, DeliveryStatus::Failed, "{r:#?}");
    assert_eq!(n.http_status, Some(500));
    assert_eq!(n.attempts, Some(2));
    assert_eq!(r.summary.failed, 0, "the jobs themselves succeeded");
    assert_eq!(hook.bodies().len(), 2, "one try and one retry");
    assert_eq!(w.count("dr"), 1, "the key stays synced");
    assert_eq!(w.count("dr2"), 1, "the key stays synced");
    let p = w.run(&["plan", "plan.yaml", "--detailed-exitcode"]);
    assert_eq!(p.code, 0, "{p:?}");
}

#[test]
fn an_endpoint_that_never_answers_times_out() {
    let hook = Hook::start(Answer::Never);
    let w = world(
        1,
        &payments(&hook.url, &[("timeout", "300ms".into()), ("retries", 1.into())], "1h"),
    );
    let t = Instant::now();
    let a = w.run(&["apply", "plan.yaml", "--report", "r.json"]);
    assert_eq!(a.code, 3, "{a:?}");
    assert!(t.elapsed() < Duration::from_secs(20), "took {:?}", t.elapsed());
    let r = report(&w, "r.json");
    let n = &r.notifications[0];
    assert_eq!(n.status, DeliveryStatus::Failed, "{r:#?}");
    assert_eq!(n.http_status, None);
    assert!(n.error.as_deref().unwrap_or("").contains("timeout"), "{n:?}");
    assert_eq!(hook.bodies().len(), 2, "one try and one retry");
    assert_eq!(w.count("dr"), 1);
}

#[test]
fn an_unset_bearer_variable_fails_the_delivery_without_sending() {
    let hook = Hook::start(Answer::Status(204));
    let w = world(
        1,
        &payments(&hook.url, &[("bearer_env", "HSM_SYNC_TEST_UNSET_TOKEN".into())], "1h"),
    );
    let a = w.run(&["apply", "plan.yaml", "--report", "r.json"]);
    assert_eq!(a.code, 3, "{a:?}");
    assert!(a.stderr.contains("HSM_SYNC_TEST_UNSET_TOKEN"), "{}", a.stderr);
    let r = report(&w, "r.json");
    assert_eq!(r.notifications[0].status, DeliveryStatus::Failed);
    assert_eq!(r.notifications[0].attempts, Some(0));
    assert!(hook.got().is_empty());
}

#[test]
fn a_deletion_is_announced_as_deleted() {
    let hook = Hook::start(Answer::Status(204));
    let plan = payments(&hook.url, &[("events", vec!["deleted"].into())], "1h");
    let w = world(1, &plan);
    assert_eq!(w.run(&["apply", "plan.yaml"]).code, 0);
    assert!(hook.got().is_empty(), "this resource wants deletions only");
    let plan = plan.without_keys().select(Sel::label("pay-*").absent());
    w.write("plan.yaml", &plan.yaml());
    let a = w.run(&["apply", "plan.yaml", "--allow-destroy"]);
    assert_eq!(a.code, 0, "{a:?}");
    let b = hook.bodies();
    assert_eq!(b.len(), 1, "{b:#?}");
    assert_eq!(b[0].event, "deleted");
    assert_eq!(b[0].targets, ["dr", "dr2"]);
    assert_eq!(w.count("dr"), 0);
}

/// Starts `hsm-sync notify plan.yaml ARGS` in the world's directory, output piped, for
/// tests that race two runs.
fn spawn_notify(w: &World, args: &[&str]) -> std::process::Child {
    w.command(w.path(), &["notify", "plan.yaml"])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("hsm-sync starts")
}

#[test]
fn racing_notify_runs_never_both_send() {
    let show = |o: &std::process::Output| {
        format!(
            "exit {:?}\n--- stdout\n{}--- stderr\n{}",
            o.status.code(),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    let hook = Hook::start(Answer::Status(204));
    let w = world(1, &payments(&hook.url, &[], "3s"));
    assert_eq!(w.run(&["apply", "plan.yaml"]).code, 0);
    hook.clear();
    std::thread::sleep(Duration::from_millis(3200));

    let spawn = |settle: &str| spawn_notify(&w, &["--test-claim-settle-ms", settle]);
    // Two runs started together: at most one sends.
    let (a, b) = (spawn("500"), spawn("500"));
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let codes = [a.status.code(), b.status.code()];
    assert!(hook.bodies().len() <= 1, "both sent: {:#?}", hook.bodies());
    assert!(
        codes.contains(&Some(4)),
        "one run must be refused: {codes:?}\n{}\n{}",
        show(&a),
        show(&b)
    );

    // Two runs that surely overlap (each waits long after claiming): one sends and the
    // other names the race (both backing off is allowed, never both sending), and no
    // claim is left behind.
    std::thread::sleep(Duration::from_millis(3200));
    hook.clear();
    let (a, b) = (spawn("1500"), spawn("1500"));
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let mut codes = [a.status.code(), b.status.code()];
    codes.sort();
    let senders = codes.iter().filter(|c| **c == Some(0)).count();
    assert!(
        codes == [Some(0), Some(4)] || codes == [Some(4), Some(4)],
        "{codes:?}\n{}\n{}",
        show(&a),
        show(&b)
    );
    assert_eq!(hook.bodies().len(), senders, "{}\n{}", show(&a), show(&b));
    let err = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).into_owned();
    for o in [&a, &b].into_iter().filter(|o| o.status.code() == Some(4)) {
        assert!(
            ["another hsm-sync run", "too long", "was notified at"]
                .iter()
                .any(|m| err(o).contains(m)),
            "{o:?}"
        );
    }
    let n = w.run(&["notify", "plan.yaml"]);
    if senders == 1 {
        assert_eq!(n.code, 4, "{n:?}");
        assert!(
            n.stderr.contains("was notified at"),
            "the cooldown, not a stale claim: {n:?}"
        );
    } else {
        assert_eq!(n.code, 0, "both backed off and released their claims: {n:?}");
    }
}

#[test]
fn notify_resources_are_checked_when_the_plan_is_validated() {
    let w = world(
        1,
        &payments(
            "ftp://127.0.0.1/x",
            &[
                ("bearer_env", "my token".into()),
                ("timeout", "soon".into()),
                ("retries", 99.into()),
            ],
            "1h",
        ),
    );
    let v = w.run(&["validate", "plan.yaml"]);
    assert_eq!(v.code, 1, "{v:?}");
    for wanted in [
        "invalid URL",
        "`bearer_env` must name an environment variable",
        "invalid timeout `soon`",
        "`retries` is at most 10",
    ] {
        assert!(v.stderr.contains(wanted), "{wanted}: {}", v.stderr);
    }
    // The plan never holds the token, so there is nothing to leak.
    let n = w.run(&["notify", "plan.yaml", "--key", "id:zz"]);
    assert_eq!(n.code, 1, "{n:?}");
}

#[test]
fn notify_says_so_when_a_key_has_no_recorded_event() {
    let hook = Hook::start(Answer::Status(204));
    let w = world(1, &payments(&hook.url, &[], "1h"));
    let n = w.run(&["notify", "plan.yaml", "--key", "label:pay-0"]);
    assert_eq!(n.code, 0, "{n:?}");
    assert!(n.stderr.contains("has no recorded lifecycle event"), "{}", n.stderr);
    assert!(n.stdout.contains("nothing to re-send"), "{}", n.stdout);
    let none = w.run(&["notify", "plan.yaml", "--key", "label:nope"]);
    assert_eq!(none.code, 1, "{none:?}");
    assert!(
        none.stderr.contains("no key selected by the plan matches"),
        "{}",
        none.stderr
    );
    assert!(hook.got().is_empty());
}

#[test]
fn a_key_pair_is_two_keys_and_both_halves_are_renotified() {
    let hook = Hook::start(Answer::Status(204));
    let w = world(1, &payments(&hook.url, &[], "3s"));
    w.fixture(&["keygen-pair", "primary", "--id", "e1", "--label", "pay-ec"]);
    let a = w.run(&["apply", "plan.yaml"]);
    assert_eq!(a.code, 0, "{a:?}");
    let mut classes: Vec<(String, Option<String>)> = hook
        .bodies()
        .into_iter()
        .filter(|b| b.key.id == "e1")
        .map(|b| (b.key.label, b.key.class))
        .collect();
    classes.sort();
    assert_eq!(
        classes,
        [
            ("pay-ec".to_string(), Some("private-key".to_string())),
            ("pay-ec".to_string(), Some("public-key".to_string()))
        ]
    );
    std::thread::sleep(Duration::from_millis(3300));
    hook.clear();
    let n = w.run(&["notify", "plan.yaml", "--key", "id:e1"]);
    assert_eq!(n.code, 0, "{n:?}");
    assert_eq!(hook.bodies().len(), 2, "both halves: {:#?}", hook.bodies());
    // Both halves were recorded as notified, so both are refused now.
    let again = w.run(&["notify", "plan.yaml", "--key", "id:e1"]);
    assert_eq!(again.code, 4, "{again:?}");
    assert_eq!(again.stderr.matches("was notified at").count(), 2, "{}", again.stderr);
}

#[test]
fn keys_without_notify_resources_still_get_their_lifecycle_record() {
    let hook = Hook::start(Answer::Status(204));
    // Text, not a `Plan`: the test checks and cuts its own plan's `notify:` block as text.
    let w = world_text(2, &hook.url, "", "  notify_cooldown: 1h\n");
    let with = w.read("plan.yaml");
    let block = format!("    notify:\n      - name: object-storage\n        url: {}\n", hook.url);
    assert!(with.contains(&block), "{with}");
    w.write("quiet.yaml", &with.replace(&block, ""));
    let data = |t: &str| w.fixture(&["count", t, "--data"]);

    let a = w.run(&["apply", "quiet.yaml", "--report", "r.json"]);
    assert_eq!(a.code, 0, "{a:?}");
    assert_eq!(w.count("dr"), 2, "both keys copied");
    // CONTRACT.md §5: every key's event is recorded, resources or not: on the token
    // backend in one page on the source for the whole run (issue 15: not an object per
    // key), elsewhere in the backend and nothing on any token; no journal left on the target.
    let on_token = crate::world::backend() == "token";
    assert_eq!(data("primary"), if on_token { "1" } else { "0" });
    assert_eq!(data("dr"), "0");
    // The report says where the time went.
    let r = report(&w, "r.json");
    // connect_ms, inventory_ms and diff_ms are always there once `timings` is.
    let timings = r.timings.as_ref().expect("timings");
    assert!(
        timings.execute_ms.is_some() && timings.notify_ms.is_some(),
        "{timings:?}"
    );

    // Resources added afterwards: the keys were synced within the cooldown, so the
    // renotify is refused and nothing is sent.
    let n = w.run(&["notify", "plan.yaml"]);
    assert_eq!(n.code, 4, "{n:?}");
    assert!(n.stderr.contains("was synced at"), "{}", n.stderr);
    assert!(hook.got().is_empty());

    // A key synced under the plan with resources gets its record and its notification.
    w.fixture(&["keygen", "primary", "--id", "b1", "--label", "pay-new"]);
    let a = w.run(&["apply", "plan.yaml"]);
    assert_eq!(a.code, 0, "{a:?}");
    assert_eq!(data("primary"), if on_token { "2" } else { "0" }, "a page per run");
    assert_eq!(hook.got().len(), 1, "{:?}", hook.got());
}

#[test]
fn notify_failed_resends_only_the_failed_deliveries_inside_the_cooldown() {
    let down = Hook::start(Answer::Status(500));
    let up = Hook::start(Answer::Status(204));
    // Two resources: `object-storage` (down, no retry) and `audit` (healthy).
    let w = world(
        1,
        &payments(&down.url, &[("retries", 0.into())], "1h")
            .notify(map([("name", "audit".into()), ("url", up.url.as_str().into())])),
    );
    let a = w.run(&["apply", "plan.yaml", "--report", "r.json"]);
    assert_eq!(a.code, 3, "{a:?}");
    let r = report(&w, "r.json");
    let by = |r: &Report, name: &str| {
        r.notifications
            .iter()
            .filter(|n| n.resource == name)
            .map(|n| (n.status, n.http_status))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        by(&r, "object-storage"),
        [(DeliveryStatus::Failed, Some(500))],
        "{r:#?}"
    );
    assert_eq!(by(&r, "audit"), [(DeliveryStatus::Sent, Some(204))], "{r:#?}");
    let first = up.bodies();
    assert_eq!((down.bodies().len(), first.len()), (1, 1));
    down.clear();
    up.clear();

    // Inside the cooldown, still down: tried again, to the failed resource only.
    let n = w.run(&["notify", "plan.yaml", "--failed"]);
    assert_eq!(n.code, 3, "{n:?}");
    assert_eq!(down.bodies().len(), 1, "{n:?}");
    assert!(up.got().is_empty(), "the healthy resource is not sent to again");
    down.clear();

    // Now it answers: delivered, exit 0, the healthy one still hears nothing new.
    down.answer(204);
    let n = w.run(&[
        "notify",
        "plan.yaml",
        "--failed",
        "--key",
        "label:pay-*",
        "--report",
        "n.json",
    ]);
    assert_eq!(n.code, 0, "{n:?}");
    let got = down.bodies();
    assert_eq!(got.len(), 1, "{got:#?}");
    assert!(got[0].renotify);
    assert_eq!(got[0].event, "synced");
    assert_eq!(
        (&got[0].key, &got[0].at),
        (&first[0].key, &first[0].at),
        "the same event"
    );
    assert!(up.got().is_empty(), "the healthy resource is not sent to again");
    let r = report(&w, "n.json");
    assert_eq!(r.command, "notify");
    assert_eq!(by(&r, "object-storage"), [(DeliveryStatus::Sent, Some(204))], "{r:#?}");
    assert!(by(&r, "audit").is_empty(), "{r:#?}");
    down.clear();

    // Nothing failed any more: nothing sent.
    let n = w.run(&["notify", "plan.yaml", "--failed"]);
    assert_eq!(n.code, 0, "{n:?}");
    assert!(
        n.stdout.contains("Notify: no failed deliveries to re-send"),
        "{}",
        n.stdout
    );
    assert!(down.got().is_empty() && up.got().is_empty());

    // A plain renotify is still held by the cooldown (the re-send counts as a notify).
    let n = w.run(&["notify", "plan.yaml"]);
    assert_eq!(n.code, 4, "{n:?}");
    assert!(n.stderr.contains("was notified at"), "{}", n.stderr);
    assert!(
        down.got().is_empty() && up.got().is_empty(),
        "nothing sent while refused"
    );
}

#[test]
fn notify_failed_with_nothing_failed_sends_nothing() {
    let hook = Hook::start(Answer::Status(204));
    let w = world(1, &payments(&hook.url, &[], "1h"));
    assert_eq!(w.run(&["apply", "plan.yaml"]).code, 0);
    hook.clear();
    let n = w.run(&["notify", "plan.yaml", "--failed", "--sync", "payments"]);
    assert_eq!(n.code, 0, "{n:?}");
    assert!(
        n.stdout.contains("Notify: no failed deliveries to re-send"),
        "{}",
        n.stdout
    );
    assert!(hook.got().is_empty());
}

#[test]
fn racing_notify_failed_runs_never_both_send() {
    let down = Hook::start(Answer::Status(500));
    let w = world(1, &payments(&down.url, &[("retries", 0.into())], "1h"));
    assert_eq!(w.run(&["apply", "plan.yaml"]).code, 3);
    down.clear();
    down.answer(204);
    let spawn = || spawn_notify(&w, &["--failed", "--test-claim-settle-ms", "1500"]);
    // Not held by the cooldown, but still by the claim: at most one sends.
    let (a, b) = (spawn(), spawn());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let sent = down.bodies().len();
    // The bodies too: if this ever fails, whether two runs sent or one delivery was
    // received twice is the first thing to know.
    assert!(sent <= 1, "both sent: {a:?}\n{b:?}\n{:#?}", down.bodies());
    let codes = [a.status.code(), b.status.code()];
    assert!(
        codes.iter().all(|c| matches!(c, Some(0 | 4))),
        "{codes:?}\n{a:?}\n{b:?}"
    );
    // Whatever the race did, no claim is left behind and the delivery is made once.
    let n = w.run(&["notify", "plan.yaml", "--failed"]);
    assert_eq!(n.code, 0, "{n:?}");
    assert_eq!(down.bodies().len(), 1, "delivered exactly once: {n:?}");
}
