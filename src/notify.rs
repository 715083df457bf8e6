//! Stage 7: associated-resource notifications (CONTRACT.md §5, issue 5).
//!
//! After `apply`, every key whose lifecycle changed (`synced` after a create or update,
//! `deleted` after a delete) is announced to the `notify` resources of its sync entry: one
//! HTTP `POST` per (key, resource, event), its `targets` listing where it happened.
//! Deliveries run in parallel with a bound ([`MAX_IN_FLIGHT`]), each attempt with the
//! resource's timeout, retried with exponential backoff; any 2xx is delivered. A failed
//! delivery is reported (exit 3) and never undoes the sync.
//!
//! Each key's last event (kind and time) is kept on the SOURCE token as a private data
//! object named `hsm-sync/state/<class>/<id>` (`CKA_APPLICATION` = `hsm-sync`; see
//! [`crate::hsm::state`] for where its JSON record lives), so that a fresh CI runner sees
//! it. `hsm-sync notify` re-sends that event, refused (exit 4, nothing sent)
//! while any selected key was synced or notified within `options.notify_cooldown`, as the
//! managed KMS does. Two runs racing on one key never both send: each reads the key's
//! state, writes its claim (a random nonce) into it, waits a moment, and reads it again;
//! only the run whose claim is still there sends (Fischer's mutual exclusion). A claim
//! lives in the state object rather than in an object of its own because SoftHSM's
//! object index can miss an object another process created just before this one
//! created its own, while an existing object's attributes are always re-read.
//!
//! This is the only module that names the HTTP client (ureq, blocking, which suits
//! rayon). HTTPS checks certificates against the system's roots.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use miette::Diagnostic;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::connect::Tokens;
use crate::diff::{Action, Diff};
use crate::domain::event::Event;
use crate::hsm::{DataObject, HsmError, TokenSession};
use crate::key::{KeyClass, KeyType};
use crate::plan::{KeyMatcher, NotifyTarget, Plan, SelectorError, SelectorValue, SyncEntry};
use crate::report::{DeliveryStatus, NotificationRecord, Outcome, Status};

/// Deliveries in flight at once.
pub const MAX_IN_FLIGHT: usize = 8;
/// A claim younger than this is another run at work; an older one is a crashed run's.
pub const CLAIM_TTL: Duration = Duration::from_secs(300);

const STATE_PREFIX: &str = "hsm-sync/state/";
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Whether a resource wants to hear of this event.
fn wanted_by(r: &NotifyTarget, event: Event) -> bool {
    r.events.contains(&event)
}

/// The key as a notification names it: never key material, only its fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyInfo {
    /// `CKA_ID` in hex (empty when the key has none).
    pub id: String,
    /// `CKA_LABEL`.
    pub label: String,
    /// Object class.
    pub class: Option<KeyClass>,
    /// Key type.
    pub key_type: Option<KeyType>,
    /// Fingerprint of the key material, where known.
    pub fingerprint: Option<String>,
}

impl KeyInfo {
    /// How the key is named in messages: its id (else its label), with its label and
    /// class, since the two halves of a key pair share an id.
    pub fn name(&self) -> String {
        let class = match self.class {
            Some(KeyClass::SecretKey) => "secret-key",
            Some(KeyClass::PrivateKey) => "private-key",
            Some(KeyClass::PublicKey) => "public-key",
            None => "unknown class",
        };
        if self.id.is_empty() {
            format!("label:{} ({class})", self.label)
        } else {
            format!("{} ({}, {class})", self.id, self.label)
        }
    }

    /// The name of this key's state object (`hsm-sync/state/<class>/<id-hex>`; keys
    /// without an id are named by their label in hex, as they are matched by label
    /// across clusters).
    pub fn state_label(&self) -> String {
        format!("{STATE_PREFIX}{}", self.suffix())
    }

    fn suffix(&self) -> String {
        let class = match self.class {
            Some(KeyClass::SecretKey) => "secret-key",
            Some(KeyClass::PrivateKey) => "private-key",
            Some(KeyClass::PublicKey) => "public-key",
            None => "unknown",
        };
        if self.id.is_empty() {
            // In hex: a label may hold spaces, and an object's name ends at the first.
            format!("{class}/label-{}", hex::encode(&self.label))
        } else {
            format!("{class}/{}", self.id)
        }
    }
}

/// The JSON body POSTed to a resource (CONTRACT.md §5).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventBody {
    /// `synced` or `deleted`.
    pub event: Event,
    /// The key.
    pub key: KeyInfo,
    /// Source cluster.
    pub source: String,
    /// The targets where the event happened.
    pub targets: Vec<String>,
    /// Sync entry.
    pub sync: String,
    /// When the event happened (RFC 3339 UTC); a re-sent event keeps its time.
    pub at: String,
    /// Whether this is a re-send by `hsm-sync notify`.
    pub renotify: bool,
}

/// The value of a key's state object on the source token (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyState {
    /// Format version (1).
    pub version: u32,
    /// The last lifecycle event.
    pub event: Event,
    /// When it happened (RFC 3339 UTC, milliseconds).
    pub at: String,
    /// When it was last re-sent by `hsm-sync notify`, if ever.
    pub notified_at: Option<String>,
    /// Sync entry.
    pub sync: String,
    /// Source cluster.
    pub source: String,
    /// The targets where it happened.
    pub targets: Vec<String>,
    /// The key.
    pub key: KeyInfo,
    /// A `notify` run at work on this key, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<Claim>,
}

impl KeyState {
    /// The last time the key was synced, deleted or notified; the cooldown runs from it.
    /// Returns the time and what happened then.
    pub fn last_activity(&self) -> Option<(SystemTime, &'static str)> {
        let at = parse_time(&self.at)?;
        let notified = self.notified_at.as_deref().and_then(parse_time);
        Some(match notified {
            Some(n) if n > at => (n, "notified"),
            _ => (at, self.event.name()),
        })
    }
}

/// A claim, written into a key's state object by a `notify` run about to send: "this
/// run is notifying this key".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// Random, per run.
    pub nonce: String,
    /// When it was made (RFC 3339 UTC); older than [`CLAIM_TTL`] it is a crashed run's.
    pub at: String,
    /// The claiming process, for the message.
    pub pid: u32,
}

impl Claim {
    fn new() -> Claim {
        let mut nonce = [0u8; 16];
        if getrandom::fill(&mut nonce).is_err() {
            // Unique enough against another process: pid and time differ.
            nonce[..4].copy_from_slice(&std::process::id().to_be_bytes());
            let t = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default();
            nonce[4..].copy_from_slice(&t.as_nanos().to_be_bytes()[4..]);
        }
        Claim {
            nonce: hex::encode(nonce),
            at: time_millis(SystemTime::now()),
            pid: std::process::id(),
        }
    }

    fn is_fresh(&self, now: SystemTime) -> bool {
        parse_time(&self.at).is_some_and(|t| now.duration_since(t).unwrap_or_default() < CLAIM_TTL)
    }

    fn refusal(&self, key: &KeyInfo) -> String {
        format!(
            "another hsm-sync run (pid {}) is notifying key {}; nothing was sent",
            self.pid,
            key.name()
        )
    }
}

/// Errors of `hsm-sync notify` before anything is sent.
#[derive(Debug, thiserror::Error, Diagnostic)]
pub enum NotifyError {
    /// A token operation failed.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Hsm(#[from] HsmError),
    /// `--sync` names no sync entry.
    #[error("no sync entry is named `{0}`")]
    #[diagnostic(code(notify::unknown_sync), help("sync entries: {1}"))]
    UnknownSync(String, String),
    /// `--key` is malformed.
    #[error("invalid key selector `{0}`: {1}")]
    #[diagnostic(code(notify::selector), help("write id:HEX, label:GLOB or handle:N"))]
    Selector(String, String),
    /// `--key` matched nothing.
    #[error("no key selected by the plan matches `{0}`")]
    #[diagnostic(code(notify::no_match))]
    NoMatch(String),
}

/// RFC 3339 UTC with milliseconds.
fn time_millis(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

fn parse_time(s: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339(s).ok()
}

/// Parses a `--key` selector: `id:HEX`, `label:GLOB` or `handle:N`, by the plan's own
/// rules for each value ([`KeyMatcher::from_value`]).
pub fn parse_selector(s: &str) -> Result<KeyMatcher, NotifyError> {
    let bad = |why: String| NotifyError::Selector(s.into(), why);
    let (kind, value) = s.split_once(':').ok_or_else(|| bad("missing `kind:`".into()))?;
    let value = match kind {
        "id" => SelectorValue::Id(value),
        "label" => SelectorValue::Label(value),
        "handle" => SelectorValue::Handle(value.parse().map_err(|_| bad("the handle is not a number".into()))?),
        _ => return Err(bad("the kind must be id, label or handle".into())),
    };
    KeyMatcher::from_value(value).map_err(|e| {
        bad(match e {
            SelectorError::EmptyId | SelectorError::NotHex(_) => "the id is not hex".into(),
            SelectorError::EmptyLabel => "the label is empty".into(),
            SelectorError::BadGlob(e) => e.to_string(),
        })
    })
}

/// Whether a matcher picks a key (`handle` needs the key on the source).
fn picks(m: &KeyMatcher, key: &KeyInfo, handle: Option<u64>) -> bool {
    match m {
        KeyMatcher::Id(id) => hex::encode(id) == key.id,
        KeyMatcher::Label(l) => &key.label == l,
        KeyMatcher::LabelGlob(_, g) => g.is_match(&key.label),
        KeyMatcher::Handle(h) => handle == Some(*h),
    }
}

/// One event of one key: what a notification announces and a state object records.
#[derive(Debug, Clone)]
struct Lifecycle {
    sync: String,
    source: String,
    key: KeyInfo,
    event: Event,
    targets: Vec<String>,
    at: SystemTime,
}

/// The events of an apply: for each (sync, key, event) the targets where a job of that
/// kind succeeded.
fn lifecycles(diff: &Diff, outcomes: &[Outcome], at: SystemTime) -> Vec<Lifecycle> {
    let mut by: BTreeMap<(String, String, String, Event), Lifecycle> = BTreeMap::new();
    for (item, o) in diff.items.iter().zip(outcomes) {
        if o.status != Status::Ok {
            continue;
        }
        let event = match item.action {
            Action::Create | Action::Update => Event::Synced,
            Action::Delete => Event::Deleted,
            _ => continue,
        };
        let fingerprint = o
            .fingerprint
            .clone()
            .or_else(|| item.fingerprint().map(String::from))
            .or_else(|| item.target_key.as_ref().and_then(|k| k.fingerprint.clone()));
        let key = KeyInfo {
            id: item.key.id.clone(),
            label: item.key.label.clone(),
            class: item.key.class,
            key_type: item.key.key_type,
            fingerprint,
        };
        let slot = (item.sync.to_string(), item.source.to_string(), key.suffix(), event);
        let l = by.entry(slot).or_insert_with(|| Lifecycle {
            sync: item.sync.to_string(),
            source: item.source.to_string(),
            key,
            event,
            targets: Vec::new(),
            at,
        });
        if !l.targets.iter().any(|t| **t == *item.target) {
            l.targets.push(item.target.to_string());
        }
    }
    by.into_values().collect()
}

/// A delivery to make: one body to one resource.
struct Delivery<'a> {
    sync: String,
    resource: &'a NotifyTarget,
    body: EventBody,
}

impl Lifecycle {
    fn body(&self, renotify: bool) -> EventBody {
        EventBody {
            event: self.event,
            key: self.key.clone(),
            source: self.source.clone(),
            targets: self.targets.clone(),
            sync: self.sync.clone(),
            at: humantime::format_rfc3339_seconds(self.at).to_string(),
            renotify,
        }
    }

    fn state(&self, notified_at: Option<SystemTime>) -> KeyState {
        KeyState {
            version: 1,
            event: self.event,
            at: time_millis(self.at),
            notified_at: notified_at.map(time_millis),
            sync: self.sync.clone(),
            source: self.source.clone(),
            targets: self.targets.clone(),
            key: self.key.clone(),
            claim: None,
        }
    }

    fn from_state(s: &KeyState) -> Option<Lifecycle> {
        Some(Lifecycle {
            sync: s.sync.clone(),
            source: s.source.clone(),
            key: s.key.clone(),
            event: s.event,
            targets: s.targets.clone(),
            at: parse_time(&s.at)?,
        })
    }
}

fn deliveries<'a>(plan: &'a Plan, events: &[Lifecycle], renotify: bool) -> Vec<Delivery<'a>> {
    let mut out = Vec::new();
    for l in events {
        let Some(entry) = plan.syncs.iter().find(|s| s.name == l.sync) else {
            continue;
        };
        for r in entry.notify.iter().filter(|r| wanted_by(r, l.event)) {
            out.push(Delivery {
                sync: l.sync.clone(),
                resource: r,
                body: l.body(renotify),
            });
        }
    }
    out
}

/// What `apply` gets back from the notification stage.
#[derive(Debug, Default)]
pub struct AfterApply {
    /// One record per delivery.
    pub records: Vec<NotificationRecord>,
    /// State objects that could not be written (the sync itself stands).
    pub warnings: Vec<String>,
}

impl AfterApply {
    /// Whether anything failed (exit 3).
    pub fn failed(&self) -> bool {
        !self.warnings.is_empty() || self.records.iter().any(|r| r.status == DeliveryStatus::Failed)
    }
}

/// After an apply: records every key's lifecycle event on its source token (CONTRACT.md
/// §5: per key, resources or not, so the cooldown holds for resources added later), then
/// announces it to the resources that want it. The state is written first, so that a
/// run killed while delivering still leaves the event where `notify` finds it.
/// `workers` sessions per source write the records side by side (one call per key; at
/// 1 ms per call a single session was a second per 1,000 keys, issue 6).
pub fn after_apply(plan: &Plan, tokens: &Tokens, diff: &Diff, outcomes: &[Outcome], workers: usize) -> AfterApply {
    let events = lifecycles(diff, outcomes, SystemTime::now());
    let mut out = AfterApply::default();
    let mut by_source: BTreeMap<&str, Vec<&Lifecycle>> = BTreeMap::new();
    for l in &events {
        by_source.entry(&l.source).or_default().push(l);
    }
    for (source, evs) in by_source {
        out.warnings.extend(record_states(tokens, source, &evs, workers));
    }
    out.records = deliver_all(&deliveries(plan, &events, false));
    out
}

/// Writes the state objects of `events` on one source token, one find for all, then
/// `workers` sessions side by side; returns a warning per key (or for the token) whose
/// event could not be recorded.
fn record_states(tokens: &Tokens, source: &str, events: &[&Lifecycle], workers: usize) -> Vec<String> {
    let warn = |what: String, e: HsmError| {
        format!("could not record the lifecycle event of {what} on `{source}` (notify cannot enforce its cooldown for it): {e}")
    };
    // The existing state objects, read by `workers` sessions (at 1 ms per call, one
    // session reading 10,000 of them was 10 s of every apply that recorded anything).
    let token = tokens.get(source);
    let found = token.session().and_then(|s| {
        let handles = s.data_handles()?;
        crate::inventory::in_chunks(token, &s, &handles, workers, |s, &h| {
            Ok(s.reread_data(h)?.filter(|d| d.label.starts_with(STATE_PREFIX)))
        })
    });
    let existing: HashMap<String, DataObject> = match found {
        Ok(mut found) => {
            // As `find_data` orders them: a duplicate name resolves the same way.
            found.sort_by(|a, b| a.label.cmp(&b.label).then(a.handle.cmp(&b.handle)));
            found.into_iter().map(|d| (d.name().to_string(), d)).collect()
        }
        Err(e) => return vec![warn(format!("{} key(s)", events.len()), e)],
    };
    // A key both synced and deleted in one run has two events and one object: both go
    // to the same worker, in order, so the second updates what the first created.
    let mut shares: Vec<Vec<&Lifecycle>> = vec![Vec::new(); workers.clamp(1, events.len().max(1))];
    for l in events {
        let base = l.key.state_label();
        let slot = base
            .bytes()
            .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize))
            % shares.len();
        shares[slot].push(l);
    }
    let write_share = |share: &[&Lifecycle]| -> Vec<String> {
        if share.is_empty() {
            return Vec::new();
        }
        let s = match tokens.get(source).session() {
            Ok(s) => s,
            Err(e) => return vec![warn(format!("{} key(s)", share.len()), e)],
        };
        let mut made: HashMap<String, DataObject> = HashMap::new();
        let mut warnings = Vec::new();
        for l in share {
            let state = l.state(None);
            let base = l.key.state_label();
            let result = match made.get(&base).or_else(|| existing.get(&base)) {
                Some(d) => write_state(&s, d, &state),
                None => create_state(&s, &state).map(|d| {
                    made.insert(base, d);
                }),
            };
            if let Err(e) = result {
                warnings.push(warn(format!("key {}", l.key.name()), e));
            }
        }
        warnings
    };
    std::thread::scope(|scope| {
        let helpers: Vec<_> = shares[1..].iter().map(|sh| scope.spawn(|| write_share(sh))).collect();
        let mut warnings = write_share(&shares[0]);
        for h in helpers {
            warnings.extend(h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)));
        }
        warnings
    })
}

fn state_json(state: &KeyState) -> String {
    // Serializing plain strings and enums cannot fail; an empty record would read back as
    // "no recorded event", never as a wrong one.
    serde_json::to_string(state).unwrap_or_default()
}

fn create_state(s: &TokenSession, state: &KeyState) -> Result<DataObject, HsmError> {
    s.create_record(&state.key.state_label(), &state_json(state))
}

fn write_state(s: &TokenSession, old: &DataObject, state: &KeyState) -> Result<(), HsmError> {
    s.update_record(old, &state_json(state))
}

fn read_state(d: &DataObject) -> Option<KeyState> {
    let st: KeyState = serde_json::from_slice(d.record()).ok()?;
    (st.key.state_label() == d.name()).then_some(st)
}

fn agent() -> &'static ureq::Agent {
    static AGENT: OnceLock<ureq::Agent> = OnceLock::new();
    AGENT.get_or_init(|| {
        ureq::Agent::config_builder()
            .tls_config(
                ureq::tls::TlsConfig::builder()
                    .root_certs(ureq::tls::RootCerts::PlatformVerifier)
                    .build(),
            )
            // Statuses are ours to judge (any 2xx is delivered); a redirect is not
            // followed, so a bearer token never travels to another host.
            .http_status_as_error(false)
            .max_redirects(0)
            .user_agent(concat!("hsm-sync/", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent()
    })
}

/// Delivers every notification, at most [`MAX_IN_FLIGHT`] at once, in input order.
fn deliver_all(ds: &[Delivery<'_>]) -> Vec<NotificationRecord> {
    if ds.is_empty() {
        return Vec::new();
    }
    let threads = ds.len().min(MAX_IN_FLIGHT);
    match rayon::ThreadPoolBuilder::new().num_threads(threads).build() {
        Ok(pool) => pool.install(|| ds.par_iter().map(deliver).collect()),
        Err(_) => ds.iter().map(deliver).collect(),
    }
}

fn backoff(retry: u32) -> Duration {
    FIRST_BACKOFF
        .saturating_mul(2u32.saturating_pow(retry.saturating_sub(1)))
        .min(MAX_BACKOFF)
}

/// One delivery: attempts with the resource's timeout, retried with exponential backoff.
fn deliver(d: &Delivery<'_>) -> NotificationRecord {
    let r = d.resource;
    let mut rec = NotificationRecord {
        sync: d.sync.clone(),
        resource: r.name.clone(),
        key_id: d.body.key.id.clone(),
        event: d.body.event,
        status: DeliveryStatus::Failed,
        http_status: None,
        error: None,
        attempts: Some(0),
    };
    let auth = match &r.bearer_env {
        None => None,
        Some(var) => match std::env::var(var) {
            Ok(v) if !v.is_empty() => Some(format!("Bearer {v}")),
            _ => {
                rec.error = Some(format!(
                    "environment variable `{var}` (the bearer token of resource `{}`) is not set; nothing was sent",
                    r.name
                ));
                return rec;
            }
        },
    };
    let body = match serde_json::to_vec(&d.body) {
        Ok(b) => b,
        Err(e) => {
            rec.error = Some(format!("cannot encode the body: {e}"));
            return rec;
        }
    };
    for attempt in 1..=r.retries.saturating_add(1) {
        if attempt > 1 {
            std::thread::sleep(backoff(attempt - 1));
        }
        rec.attempts = Some(attempt);
        let mut req = agent()
            .post(&r.url)
            .config()
            .timeout_global(Some(r.timeout))
            .build()
            .header("Content-Type", "application/json");
        if let Some(a) = &auth {
            req = req.header("Authorization", a);
        }
        match req.send(&body[..]) {
            Ok(resp) => {
                let status = resp.status().as_u16();
                rec.http_status = Some(status);
                if (200..300).contains(&status) {
                    rec.status = DeliveryStatus::Sent;
                    rec.error = None;
                    return rec;
                }
                rec.error = Some(format!("HTTP {status}"));
            }
            Err(e) => {
                rec.http_status = None;
                rec.error = Some(describe_http_error(&e, r.timeout));
            }
        }
    }
    rec
}

fn describe_http_error(e: &ureq::Error, timeout: Duration) -> String {
    match e {
        ureq::Error::Timeout(_) => format!("no answer within {} (timeout)", humantime::format_duration(timeout)),
        other => other.to_string(),
    }
}

/// What `hsm-sync notify` asks for.
pub struct Selection<'a> {
    /// Only this sync entry.
    pub sync: Option<&'a str>,
    /// Only keys this selector picks.
    pub key: Option<KeyMatcher>,
}

/// How a `notify` run ended.
#[derive(Debug)]
pub enum Renotify {
    /// Refused, nothing sent (exit 4): one message per refused key.
    Refused(Vec<String>),
    /// Sent (or tried to): the records, and keys skipped with why.
    Done {
        /// One record per delivery.
        records: Vec<NotificationRecord>,
        /// Keys with nothing to re-send, and why.
        skipped: Vec<String>,
        /// State objects that could not be updated.
        warnings: Vec<String>,
    },
}

/// One key `notify` would re-send.
struct Candidate<'a> {
    entry: &'a SyncEntry,
    state_label: String,
    key: KeyInfo,
    state: Option<(DataObject, KeyState)>,
}

fn refusal(key: &KeyInfo, state: &KeyState, cooldown: Duration, now: SystemTime) -> Option<String> {
    let (last, what) = state.last_activity()?;
    let until = last.checked_add(cooldown)?;
    // Shown in whole seconds, rounded up: at the time printed the key is eligible.
    let shown = match until.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) if d.subsec_nanos() > 0 => until + Duration::from_nanos(u64::from(1_000_000_000 - d.subsec_nanos())),
        _ => until,
    };
    (now < until).then(|| {
        format!(
            "key {} was {what} at {}; notify cannot be performed until {}",
            key.name(),
            humantime::format_rfc3339_seconds(last),
            humantime::format_rfc3339_seconds(shown)
        )
    })
}

/// `hsm-sync notify`: re-sends the latest lifecycle event of the selected keys, unless
/// one of them is within the cooldown or another run is notifying it (then nothing is
/// sent at all).
pub fn renotify(plan: &Plan, tokens: &Tokens, sel: &Selection<'_>) -> Result<Renotify, NotifyError> {
    let entries: Vec<&SyncEntry> = match sel.sync {
        Some(name) => {
            let e = plan.syncs.iter().find(|s| s.name == name).ok_or_else(|| {
                NotifyError::UnknownSync(
                    name.into(),
                    plan.syncs
                        .iter()
                        .map(|s| s.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                )
            })?;
            vec![e]
        }
        None => plan.syncs.iter().collect(),
    };
    let now = SystemTime::now();
    let cooldown = plan.options.notify_cooldown;

    // 1. The candidates, by source: keys the entries select, and keys whose recorded
    //    event belongs to one of them (a deleted key may be gone from the source).
    let mut by_source: BTreeMap<&str, Vec<Candidate<'_>>> = BTreeMap::new();
    let mut sessions: HashMap<&str, TokenSession> = HashMap::new();
    for entry in &entries {
        if !sessions.contains_key(entry.source.as_str()) {
            sessions.insert(&entry.source, tokens.get(&entry.source).session()?);
        }
    }
    let mut skipped = Vec::new();
    for (source, s) in &sessions {
        let keys = s.list_keys()?;
        let states: Vec<(DataObject, KeyState)> = s
            .find_data(STATE_PREFIX)?
            .into_iter()
            .filter_map(|d| read_state(&d).map(|st| (d, st)))
            .collect();
        // By name, and the candidates so far by state label: lookups per key, not scans
        // (a scan per key was quadratic in the keys of a large notify run).
        let by_name: HashMap<&str, &(DataObject, KeyState)> = states.iter().map(|p| (p.0.name(), p)).collect();
        let mut listed: HashSet<String> = HashSet::new();
        let list = by_source.entry(source).or_default();
        for entry in entries.iter().filter(|e| e.source == *source) {
            let mut push = |key: KeyInfo, handle: Option<u64>| {
                if sel.key.as_ref().is_some_and(|m| !picks(m, &key, handle)) {
                    return;
                }
                let label = key.state_label();
                if listed.contains(&label) {
                    return;
                }
                let state = by_name.get(label.as_str()).map(|p| (*p).clone());
                // The resources are those of the entry the event happened under.
                let owner = match &state {
                    None => Some(*entry),
                    Some((_, st)) => match entries.iter().find(|e| e.name == st.sync) {
                        Some(e) => Some(*e),
                        None if plan.syncs.iter().any(|e| e.name == st.sync) => None,
                        None => Some(*entry),
                    },
                };
                let Some(owner) = owner else {
                    skipped.push(format!(
                        "key {}: its last event happened under sync `{}`, not selected: skipped",
                        key.name(),
                        state.map(|(_, st)| st.sync).unwrap_or_default()
                    ));
                    return;
                };
                listed.insert(label.clone());
                list.push(Candidate {
                    entry: owner,
                    state_label: label,
                    key,
                    state,
                });
            };
            for k in keys.iter().filter(|k| {
                entry
                    .selectors
                    .iter()
                    .any(|sl| picks(&sl.matcher, &info_of(k), Some(k.handle)))
            }) {
                push(info_of(k), Some(k.handle));
            }
            for (_, st) in states.iter().filter(|(_, st)| st.sync == entry.name) {
                push(st.key.clone(), None);
            }
        }
    }
    let total: usize = by_source.values().map(Vec::len).sum();
    if total == 0 {
        if let Some(m) = &sel.key {
            return Err(NotifyError::NoMatch(m.describe()));
        }
    }

    // 2. Cooldown: refuse everything if any key is within it.
    let refused: Vec<String> = by_source
        .values()
        .flatten()
        .filter_map(|c| c.state.as_ref().and_then(|(_, st)| refusal(&c.key, st, cooldown, now)))
        .collect();
    if !refused.is_empty() {
        return Ok(Renotify::Refused(refused));
    }

    // Keys with nothing to send are skipped, not refused.
    for list in by_source.values_mut() {
        list.retain(|c| match &c.state {
            _ if c.entry.notify.is_empty() => {
                skipped.push(format!(
                    "key {}: sync `{}` has no notify resources: skipped",
                    c.key.name(),
                    c.entry.name
                ));
                false
            }
            None => {
                skipped.push(format!(
                    "key {} has no recorded lifecycle event on `{}` (apply has not synced it yet): skipped",
                    c.key.name(),
                    c.entry.source
                ));
                false
            }
            Some((_, st)) if !c.entry.notify.iter().any(|r| wanted_by(r, st.event)) => {
                skipped.push(format!(
                    "key {}: no resource of sync `{}` wants `{}` events: skipped",
                    c.key.name(),
                    c.entry.name,
                    st.event.name()
                ));
                false
            }
            Some(_) => true,
        });
    }

    // 3. Claim each key in its state object, wait, and check the claims held.
    let mine = Claim::new();
    let mut held: Vec<(&str, usize)> = Vec::new();
    let outcome = claim_and_send(plan, &sessions, &mut by_source, &mine, &mut held, cooldown);
    // Whatever happened, release the claims still held (a crashed run's expire).
    for (source, i) in held {
        let (Some(s), Some(c)) = (sessions.get(source), by_source.get(source).and_then(|l| l.get(i))) else {
            continue;
        };
        let _ = release(s, c, &mine);
    }
    Ok(match outcome? {
        Renotify::Done { records, warnings, .. } => Renotify::Done {
            records,
            skipped,
            warnings,
        },
        refused => refused,
    })
}

fn info_of(k: &crate::key::KeyObject) -> KeyInfo {
    KeyInfo {
        id: hex::encode(&k.id),
        label: k.label.clone(),
        class: Some(k.class),
        key_type: Some(k.key_type),
        fingerprint: k.fingerprint.clone(),
    }
}

/// The state object of a candidate as it is on the token now: re-read by handle, so
/// another process's change is seen (SoftHSM re-reads an object whose file changed).
fn current(s: &TokenSession, c: &Candidate<'_>) -> Result<Option<(DataObject, KeyState)>, HsmError> {
    let Some((d, _)) = &c.state else {
        return Ok(None);
    };
    Ok(s.reread_data(d.handle)?.and_then(|d| read_state(&d).map(|st| (d, st))))
}

/// Clears our claim from a key's state, if it is still ours.
fn release(s: &TokenSession, c: &Candidate<'_>, mine: &Claim) -> Result<(), HsmError> {
    if let Some((d, mut st)) = current(s, c)? {
        if st.claim.as_ref().is_some_and(|x| x.nonce == mine.nonce) {
            st.claim = None;
            write_state(s, &d, &st)?;
        }
    }
    Ok(())
}

/// How long a run waits between writing its claims and checking them. Longer than the
/// gap between reading a key's state and writing a claim into it (two PKCS#11 calls,
/// about a millisecond; a run measures it and backs off past half of this), so a run
/// that read before another's claim has written its own by then (Fischer's mutual
/// exclusion: whoever wrote last holds the key; two runs cannot both hold it).
const CLAIM_SETTLE: Duration = Duration::from_millis(500);

fn claim_and_send<'p>(
    plan: &'p Plan,
    sessions: &HashMap<&'p str, TokenSession>,
    by_source: &mut BTreeMap<&'p str, Vec<Candidate<'p>>>,
    mine: &Claim,
    held: &mut Vec<(&'p str, usize)>,
    cooldown: Duration,
) -> Result<Renotify, NotifyError> {
    // Read, check and claim each key in one short step. Fischer's exclusion holds when
    // every run writes its claim less than `settle` after reading the state: measured
    // here, and a run that took longer backs off instead of trusting it.
    let settle = std::env::var("HSM_SYNC_TEST_CLAIM_SETTLE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(CLAIM_SETTLE, Duration::from_millis);
    let mut refused = Vec::new();
    for (source, list) in by_source.iter() {
        let s = &sessions[source];
        for (i, c) in list.iter().enumerate() {
            let started = Instant::now();
            let Some((d, st)) = current(s, c)? else {
                continue;
            };
            let now = SystemTime::now();
            if let Some(other) = st.claim.as_ref().filter(|x| x.nonce != mine.nonce && x.is_fresh(now)) {
                refused.push(other.refusal(&c.key));
                continue;
            }
            if let Some(why) = refusal(&c.key, &st, cooldown, now) {
                refused.push(why);
                continue;
            }
            let mut claimed = st;
            claimed.claim = Some(mine.clone());
            write_state(s, &d, &claimed)?;
            held.push((*source, i));
            if started.elapsed() * 2 >= settle {
                refused.push(format!(
                    "claiming key {} took {} ms, too long to be sure no other run is notifying it; nothing was sent (try again)",
                    c.key.name(),
                    started.elapsed().as_millis()
                ));
            }
        }
    }
    if !refused.is_empty() {
        return Ok(Renotify::Refused(refused));
    }
    std::thread::sleep(settle);

    // Still ours? Whoever wrote last holds the key; a run that lost says so.
    for (source, list) in by_source.iter_mut() {
        let s = &sessions[source];
        for c in list.iter_mut() {
            c.state = current(s, c)?;
            match c.state.as_ref().and_then(|(_, st)| st.claim.as_ref()) {
                Some(x) if x.nonce == mine.nonce => {}
                Some(other) => refused.push(other.refusal(&c.key)),
                None => refused.push(format!(
                    "the state of key {} changed while this run claimed it (another hsm-sync run?); nothing was sent",
                    c.key.name()
                )),
            }
        }
    }
    if !refused.is_empty() {
        return Ok(Renotify::Refused(refused));
    }

    // 4. Send, then record `notified_at` (the claim goes with that write) for keys with
    //    at least one delivery made; the caller releases the others' claims.
    let mut events = Vec::new();
    for c in by_source.values().flatten() {
        if let Some(mut l) = c.state.as_ref().and_then(|(_, st)| Lifecycle::from_state(st)) {
            // The candidate's entry: the event's own, or the one selecting the key when
            // the event's entry is gone from the plan.
            l.sync = c.entry.name.clone();
            events.push(l);
        }
    }
    let ds = deliveries(plan, &events, true);
    let records = deliver_all(&ds);
    // Records come back in delivery order: the keys with at least one delivery made.
    let sent: HashSet<String> = ds
        .iter()
        .zip(&records)
        .filter(|(_, r)| r.status == DeliveryStatus::Sent)
        .map(|(d, _)| d.body.key.state_label())
        .collect();
    let sent_at = SystemTime::now();
    let mut warnings = Vec::new();
    for (source, list) in by_source.iter() {
        let s = &sessions[source];
        for c in list {
            let Some((d, st)) = &c.state else { continue };
            if !sent.contains(&c.state_label) {
                continue;
            }
            let mut new = st.clone();
            new.notified_at = Some(time_millis(sent_at));
            new.claim = None;
            if let Err(e) = write_state(s, d, &new) {
                warnings.push(format!(
                    "could not record the notification of key {}: {e}",
                    c.key.name()
                ));
            }
        }
    }
    Ok(Renotify::Done {
        records,
        skipped: Vec::new(),
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_parse() {
        assert!(matches!(parse_selector("id:a1b2").unwrap(), KeyMatcher::Id(v) if v == [0xa1, 0xb2]));
        assert!(matches!(
            parse_selector("label:pay-*").unwrap(),
            KeyMatcher::LabelGlob(..)
        ));
        assert!(matches!(parse_selector("label:pay").unwrap(), KeyMatcher::Label(_)));
        assert!(matches!(parse_selector("handle:12").unwrap(), KeyMatcher::Handle(12)));
        for bad in ["a1b2", "id:zz", "id:", "handle:x", "label:", "name:x"] {
            assert!(parse_selector(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn selector_errors_say_what_is_wrong_with_the_value() {
        let why = |s: &str| match parse_selector(s) {
            Err(NotifyError::Selector(_, why)) => why,
            other => panic!("{s}: {other:?}"),
        };
        assert_eq!(why("a1b2"), "missing `kind:`");
        assert_eq!(why("id:zz"), "the id is not hex");
        assert_eq!(why("id:"), "the id is not hex");
        assert_eq!(why("label:"), "the label is empty");
        assert_eq!(why("handle:x"), "the handle is not a number");
        assert_eq!(why("name:x"), "the kind must be id, label or handle");
        assert!(why("label:[ab").contains("unclosed"), "{}", why("label:[ab"));
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff(1), Duration::from_millis(200));
        assert_eq!(backoff(2), Duration::from_millis(400));
        assert_eq!(backoff(3), Duration::from_millis(800));
        assert_eq!(backoff(30), MAX_BACKOFF);
    }

    #[test]
    fn cooldown_runs_from_the_last_activity() {
        let key = KeyInfo {
            id: "a1".into(),
            label: "k".into(),
            class: Some(KeyClass::SecretKey),
            key_type: Some(KeyType::Aes),
            fingerprint: None,
        };
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut st = KeyState {
            version: 1,
            event: Event::Synced,
            at: time_millis(t0),
            notified_at: None,
            sync: "main".into(),
            source: "primary".into(),
            targets: vec!["dr".into()],
            key: key.clone(),
            claim: None,
        };
        let hour = Duration::from_secs(3600);
        let msg = refusal(&key, &st, hour, t0 + Duration::from_secs(60)).unwrap();
        assert!(msg.contains("was synced at 2027-01-15T08:00:00Z"), "{msg}");
        assert!(msg.contains("cannot be performed until 2027-01-15T09:00:00Z"), "{msg}");
        assert!(refusal(&key, &st, hour, t0 + hour).is_none());
        let half = KeyState {
            at: time_millis(t0 + Duration::from_millis(500)),
            ..st.clone()
        };
        let msg = refusal(&key, &half, hour, t0 + Duration::from_secs(60)).unwrap();
        assert!(msg.contains("until 2027-01-15T09:00:01Z"), "rounded up: {msg}");
        st.notified_at = Some(time_millis(t0 + hour));
        let msg = refusal(&key, &st, hour, t0 + hour + Duration::from_secs(1)).unwrap();
        assert!(msg.contains("was notified at"), "{msg}");
        assert_eq!(key.state_label(), "hsm-sync/state/secret-key/a1");
        let unnamed = KeyInfo {
            id: String::new(),
            label: "my key".into(),
            ..key.clone()
        };
        assert_eq!(unnamed.state_label(), "hsm-sync/state/secret-key/label-6d79206b6579");
    }
}
