//! Stage 7: associated-resource notifications (CONTRACT.md §5, issue 5).
//!
//! After `apply` ([`after_apply`]), every key whose lifecycle changed (`synced` after a
//! create or update, `deleted` after a delete) is recorded on its source and announced to
//! the `notify` resources of its sync entry: one delivery per (key, resource, event), its
//! `targets` listing where it happened. A failed delivery is reported (exit 3) and never
//! undoes the sync. `hsm-sync notify` ([`renotify`]) re-sends a key's recorded event,
//! refused (exit 4, nothing sent) while any selected key is within the cooldown or
//! claimed by another run. Each record remembers the resources whose last delivery
//! failed; `notify --failed` re-sends to those only, past the cooldown, under the claim.
//!
//! This file wires the parts, one concern each:
//!
//! - `lifecycle`: which events an apply made and which resources want them (pure);
//! - `store`: each key's [`KeyState`] record, kept on the source token;
//! - `cooldown`: the refusal rule of `notify` (pure);
//! - `claim`: the protocol that keeps two `notify` runs from both sending;
//! - `sink`: the `Sink` port, bounded parallel delivery, and the HTTP sink (the only
//!   file naming the HTTP client);
//! - `wire`: the body a resource receives ([`EventBody`], [`KeyInfo`]).
//!
//! What the operator sees is printed by [`crate::render::print_notifications`].

mod claim;
mod cooldown;
mod lifecycle;
mod sink;
mod store;
mod wire;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, SystemTime};

use miette::Diagnostic;

pub(crate) use claim::{Claim, DEFAULT_CLAIM_SETTLE};
pub(crate) use wire::KeyInfo;

use claim::Sessions;
use lifecycle::{deliveries, lifecycles, wanted_by, Lifecycle};
use sink::http::HttpSink;
use sink::{deliver_all, Delivery, Sink};
use store::Stored;

use crate::diff::Diff;
use crate::domain::handle::Handle;
use crate::hsm::{HsmError, KeySession, KeyStore, RecordSession};
use crate::limits::Limits;
use crate::plan::{KeyMatcher, Plan, SelectorError, SelectorValue, SyncEntry};
use crate::report::{DeliveryStatus, NotificationRecord, Outcome};

/// Errors of `hsm-sync notify` before anything is sent.
#[derive(Debug, thiserror::Error, Diagnostic)]
pub(crate) enum NotifyError {
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

/// RFC 3339 UTC with milliseconds: the times of state records and claims.
fn time_millis(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

fn parse_time(s: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339(s).ok()
}

/// Parses a `--key` selector: `id:HEX`, `label:GLOB` or `handle:N`, by the plan's own
/// rules for each value ([`KeyMatcher::from_value`]).
pub(crate) fn parse_selector(s: &str) -> Result<KeyMatcher, NotifyError> {
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
fn picks(m: &KeyMatcher, key: &KeyInfo, handle: Option<Handle>) -> bool {
    match m {
        KeyMatcher::Id(id) => hex::encode(id) == key.id,
        KeyMatcher::Label(l) => &key.label == l,
        KeyMatcher::LabelGlob(_, g) => g.is_match(&key.label),
        KeyMatcher::Handle(h) => handle == Some(*h),
    }
}

fn info_of(k: &crate::domain::key::KeyObject) -> KeyInfo {
    KeyInfo {
        id: hex::encode(&k.id),
        label: k.label.clone(),
        class: Some(k.class),
        key_type: Some(k.key_type),
        fingerprint: k.fingerprint.known().map(String::from),
    }
}

/// Whether any record is a failed delivery.
fn any_failed(records: &[NotificationRecord]) -> bool {
    records.iter().any(|r| r.status == DeliveryStatus::Failed)
}

/// What `apply` gets back from the notification stage.
#[derive(Debug, Default)]
pub(crate) struct AfterApply {
    /// One record per delivery.
    pub records: Vec<NotificationRecord>,
    /// State objects that could not be written (the sync itself stands).
    pub warnings: Vec<String>,
}

impl AfterApply {
    /// Whether anything failed (exit 3).
    pub(crate) fn failed(&self) -> bool {
        !self.warnings.is_empty() || any_failed(&self.records)
    }
}

/// After an apply: records every key's lifecycle event on its source token (CONTRACT.md
/// §5: per key, resources or not, so the cooldown holds for resources added later), then
/// announces it to the resources that want it. The state is written first, so that a
/// run killed while delivering still leaves the event where `notify` finds it.
/// `limits.jobs()` sessions per source write the records side by side (one call per key;
/// at 1 ms per call a single session was a second per 1,000 keys, issue 6).
pub(crate) fn after_apply(
    plan: &Plan,
    tokens: &impl KeyStore,
    diff: &Diff,
    outcomes: &[Outcome],
    limits: Limits,
) -> AfterApply {
    let events = lifecycles(diff, outcomes, SystemTime::now());
    let mut out = AfterApply::default();
    let mut by_source: BTreeMap<&str, Vec<&Lifecycle>> = BTreeMap::new();
    for l in &events {
        by_source.entry(&l.source).or_default().push(l);
    }
    for (source, evs) in by_source {
        out.warnings
            .extend(store::record_events(tokens, source, &evs, limits.jobs()));
    }
    let ds = deliveries(plan, &events, false);
    out.records = deliver_all(&HttpSink, &ds, limits.notify_in_flight());
    // The records were written without failed marks; the keys with a failed delivery get
    // theirs now, for `notify --failed`.
    let mut marks: BTreeMap<&str, HashMap<String, BTreeSet<String>>> = BTreeMap::new();
    for (d, tried) in tried_by_key(&ds, &out.records) {
        let failed = marks_after(&BTreeSet::new(), &tried);
        if !failed.is_empty() {
            marks
                .entry(d.body.source.as_str())
                .or_default()
                .insert(d.body.key.state_label(), failed);
        }
    }
    for (source, m) in marks {
        out.warnings.extend(store::mark_failed(tokens, source, &m));
    }
    out
}

/// What the deliveries did, per key (by its first delivery, in delivery order): each
/// resource tried and whether its last delivery failed.
fn tried_by_key<'d, 'a>(
    ds: &'d [Delivery<'a>],
    records: &[NotificationRecord],
) -> Vec<(&'d Delivery<'a>, BTreeMap<String, bool>)> {
    let mut out: Vec<(&Delivery<'_>, BTreeMap<String, bool>)> = Vec::new();
    let mut at: HashMap<String, usize> = HashMap::new();
    for (d, r) in ds.iter().zip(records) {
        let i = *at.entry(d.body.key.state_label()).or_insert_with(|| {
            out.push((d, BTreeMap::new()));
            out.len() - 1
        });
        out[i]
            .1
            .insert(d.resource.name.clone(), r.status == DeliveryStatus::Failed);
    }
    out
}

/// A key's failed marks after its deliveries: each resource tried is marked or cleared
/// by how its last delivery went; the others keep what they had.
fn marks_after(old: &BTreeSet<String>, tried: &BTreeMap<String, bool>) -> BTreeSet<String> {
    old.iter()
        .filter(|r| !tried.contains_key(*r))
        .cloned()
        .chain(tried.iter().filter(|(_, failed)| **failed).map(|(r, _)| r.clone()))
        .collect()
}

/// The resources of `entry` that `notify --failed` re-sends `st`'s event to: those whose
/// last delivery failed, still in the entry and still wanting the event.
fn failed_resources(entry: &SyncEntry, st: &store::KeyState) -> BTreeSet<String> {
    entry
        .notify
        .iter()
        .filter(|r| st.failed.contains(&r.name) && wanted_by(r, st.event))
        .map(|r| r.name.clone())
        .collect()
}

/// What `hsm-sync notify` asks for.
pub(crate) struct Selection<'a> {
    /// Only this sync entry.
    pub sync: Option<&'a str>,
    /// Only keys this selector picks.
    pub key: Option<KeyMatcher>,
    /// `--failed`: only the deliveries whose last attempt failed, to those resources
    /// only, and not held by the cooldown (the claim still is).
    pub failed_only: bool,
}

/// How a `notify` run ended.
#[derive(Debug)]
pub(crate) enum Renotify {
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
    state: Option<Stored>,
}

/// `hsm-sync notify`: re-sends the latest lifecycle event of the selected keys, unless
/// one of them is within the cooldown or another run is notifying it (then nothing is
/// sent at all). With [`Selection::failed_only`], only the keys and resources whose last
/// delivery failed, and the cooldown does not hold. `settle` is the claim protocol's
/// wait ([`DEFAULT_CLAIM_SETTLE`]); `limits` bounds the deliveries in flight.
pub(crate) fn renotify<S: KeyStore>(
    plan: &Plan,
    tokens: &S,
    sel: &Selection<'_>,
    settle: Duration,
    limits: Limits,
) -> Result<Renotify, NotifyError> {
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
    let mut sessions: Sessions<'_, S::Session> = HashMap::new();
    for entry in &entries {
        if !sessions.contains_key(entry.source.as_str()) {
            sessions.insert(&entry.source, tokens.open_session(&entry.source)?);
        }
    }
    let mut skipped = Vec::new();
    let mut by_source = candidates(plan, &entries, &sessions, sel, &mut skipped)?;
    let total: usize = by_source.values().map(Vec::len).sum();
    if total == 0 {
        if let Some(m) = &sel.key {
            return Err(NotifyError::NoMatch(m.describe()));
        }
    }

    // `--failed`: only keys with a failed delivery to a resource they still have; the
    // cooldown does not hold them (a failed delivery was never received).
    let cooldown = if sel.failed_only {
        for list in by_source.values_mut() {
            list.retain(|c| {
                c.state
                    .as_ref()
                    .is_some_and(|(_, st)| !failed_resources(c.entry, st).is_empty())
            });
        }
        Duration::ZERO
    } else {
        cooldown
    };

    // 2. Cooldown: refuse everything if any key is within it.
    let refused: Vec<String> = by_source
        .values()
        .flatten()
        .filter_map(|c| {
            c.state
                .as_ref()
                .and_then(|(_, st)| cooldown::refusal(&c.key, st, cooldown, now))
        })
        .collect();
    if !refused.is_empty() {
        return Ok(Renotify::Refused(refused));
    }

    // Keys with nothing to send are skipped, not refused.
    for list in by_source.values_mut() {
        list.retain(|c| match unsendable(c) {
            Some(why) => {
                skipped.push(why);
                false
            }
            None => true,
        });
    }

    // 3. Claim each key in its state record, wait, and check the claims held; then send.
    let mine = Claim::new();
    let mut held: Vec<(&str, usize)> = Vec::new();
    let outcome = match claim::claim_all(&sessions, &mut by_source, &mine, settle, cooldown, &mut held) {
        Ok(refused) if refused.is_empty() => Ok(send_and_record(
            &HttpSink,
            plan,
            &sessions,
            &by_source,
            sel.failed_only,
            limits.notify_in_flight(),
        )),
        Ok(refused) => Ok(Renotify::Refused(refused)),
        Err(e) => Err(NotifyError::from(e)),
    };
    // Whatever happened, release the claims still held (a crashed run's expire).
    for (source, i) in held {
        let (Some(s), Some(c)) = (sessions.get(source), by_source.get(source).and_then(|l| l.get(i))) else {
            continue;
        };
        let _ = claim::release(s, c, &mine);
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

/// The candidates of `notify`, by source: the keys the entries select on each source,
/// and the keys whose recorded event belongs to one of them. A key whose last event
/// happened under an entry that is in the plan but not selected is skipped, with why.
fn candidates<'p, S: KeySession + RecordSession>(
    plan: &'p Plan,
    entries: &[&'p SyncEntry],
    sessions: &Sessions<'p, S>,
    sel: &Selection<'_>,
    skipped: &mut Vec<String>,
) -> Result<BTreeMap<&'p str, Vec<Candidate<'p>>>, NotifyError> {
    let mut by_source: BTreeMap<&str, Vec<Candidate<'_>>> = BTreeMap::new();
    for (source, s) in sessions {
        let keys = s.list_keys()?;
        let states = store::read_all(s)?;
        // By name, and the candidates so far by state label: lookups per key, not scans
        // (a scan per key was quadratic in the keys of a large notify run).
        let by_name: HashMap<&str, &Stored> = states.iter().map(|p| (p.0.name(), p)).collect();
        let mut listed: HashSet<String> = HashSet::new();
        let list = by_source.entry(*source).or_default();
        for entry in entries.iter().filter(|e| e.source == *source) {
            let mut push = |key: KeyInfo, handle: Option<Handle>| {
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
    Ok(by_source)
}

/// Why a candidate has nothing to re-send (it is skipped, not refused), if so.
fn unsendable(c: &Candidate<'_>) -> Option<String> {
    match &c.state {
        _ if c.entry.notify.is_empty() => Some(format!(
            "key {}: sync `{}` has no notify resources: skipped",
            c.key.name(),
            c.entry.name
        )),
        None => Some(format!(
            "key {} has no recorded lifecycle event on `{}` (apply has not synced it yet): skipped",
            c.key.name(),
            c.entry.source
        )),
        Some((_, st)) if !c.entry.notify.iter().any(|r| wanted_by(r, st.event)) => Some(format!(
            "key {}: no resource of sync `{}` wants `{}` events: skipped",
            c.key.name(),
            c.entry.name,
            st.event.name()
        )),
        Some(_) => None,
    }
}

/// Step 4 of `notify`: sends the claimed keys' events (with `failed_only`, to the
/// resources whose last delivery failed, as the records read after the claim say), then
/// records the outcome (the claim goes with that write): `notified_at` for keys with at
/// least one delivery made, and each resource tried marked failed or cleared. The caller
/// releases the claims of keys with nothing to record.
fn send_and_record<'p, S: RecordSession>(
    sink: &impl Sink,
    plan: &'p Plan,
    sessions: &Sessions<'p, S>,
    by_source: &BTreeMap<&'p str, Vec<Candidate<'p>>>,
    failed_only: bool,
    in_flight: usize,
) -> Renotify {
    let mut events = Vec::new();
    let mut only: HashMap<String, BTreeSet<String>> = HashMap::new();
    for c in by_source.values().flatten() {
        let Some((_, st)) = &c.state else { continue };
        if let Some(mut l) = st.lifecycle() {
            // The candidate's entry: the event's own, or the one selecting the key when
            // the event's entry is gone from the plan.
            l.sync = c.entry.name.clone();
            events.push(l);
            if failed_only {
                only.insert(c.state_label.clone(), failed_resources(c.entry, st));
            }
        }
    }
    let mut ds = deliveries(plan, &events, true);
    if failed_only {
        ds.retain(|d| {
            only.get(&d.body.key.state_label())
                .is_some_and(|rs| rs.contains(&d.resource.name))
        });
    }
    let records = deliver_all(sink, &ds, in_flight);
    let sent = sent_keys(&ds, &records);
    let tried: HashMap<String, BTreeMap<String, bool>> = tried_by_key(&ds, &records)
        .into_iter()
        .map(|(d, t)| (d.body.key.state_label(), t))
        .collect();
    let sent_at = SystemTime::now();
    let mut warnings = Vec::new();
    for (source, list) in by_source {
        let s = &sessions[source];
        for c in list {
            let Some((d, st)) = &c.state else { continue };
            let Some(tried) = tried.get(&c.state_label) else {
                continue;
            };
            let mut new = st.clone();
            if sent.contains(&c.state_label) {
                new.notified_at = Some(time_millis(sent_at));
            }
            new.failed = marks_after(&st.failed, tried);
            if new.notified_at == st.notified_at && new.failed == st.failed {
                continue;
            }
            new.claim = None;
            if let Err(e) = store::write(s, d, &new) {
                warnings.push(format!(
                    "could not record the notification of key {}: {e}",
                    c.key.name()
                ));
            }
        }
    }
    Renotify::Done {
        records,
        skipped: Vec::new(),
        warnings,
    }
}

/// The state labels of the keys with at least one delivery made (records come back in
/// delivery order).
fn sent_keys(ds: &[Delivery<'_>], records: &[NotificationRecord]) -> HashSet<String> {
    ds.iter()
        .zip(records)
        .filter(|(_, r)| r.status == DeliveryStatus::Sent)
        .map(|(d, _)| d.body.key.state_label())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::EventBody;

    #[test]
    fn selectors_parse() {
        assert!(matches!(parse_selector("id:a1b2").unwrap(), KeyMatcher::Id(v) if v == [0xa1, 0xb2]));
        assert!(matches!(
            parse_selector("label:pay-*").unwrap(),
            KeyMatcher::LabelGlob(..)
        ));
        assert!(matches!(parse_selector("label:pay").unwrap(), KeyMatcher::Label(_)));
        assert!(matches!(parse_selector("handle:12").unwrap(), KeyMatcher::Handle(h) if h == Handle::claimed(12)));
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
    fn the_keys_sent_are_those_with_a_delivery_made() {
        use sink::tests::{resource, FakeSink};
        let (ok, down) = (resource("ok"), resource("down"));
        let key = KeyInfo::sample;
        let body = |id: &str| EventBody {
            event: crate::domain::event::Event::Synced,
            key: key(id),
            source: "primary".into(),
            targets: vec!["dr".into()],
            sync: "main".into(),
            at: "2027-01-15T08:00:00Z".into(),
            renotify: true,
        };
        let ds = vec![
            Delivery {
                sync: "main".into(),
                resource: &ok,
                body: body("a1"),
            },
            Delivery {
                sync: "main".into(),
                resource: &down,
                body: body("a1"),
            },
            Delivery {
                sync: "main".into(),
                resource: &down,
                body: body("b2"),
            },
        ];
        let sink = FakeSink {
            failing: vec!["down".into()],
            ..FakeSink::default()
        };
        let records = deliver_all(&sink, &ds, 8);
        let sent = sent_keys(&ds, &records);
        assert_eq!(sent, HashSet::from([key("a1").state_label()]));
        let after = AfterApply {
            records,
            warnings: Vec::new(),
        };
        assert!(after.failed(), "one failed delivery fails the apply");
        let all_sent = AfterApply {
            records: after
                .records
                .into_iter()
                .filter(|r| r.status == DeliveryStatus::Sent)
                .collect(),
            warnings: Vec::new(),
        };
        assert!(!all_sent.failed());
        assert!(AfterApply {
            warnings: vec!["w".into()],
            ..AfterApply::default()
        }
        .failed());
    }

    #[test]
    fn a_delivery_marks_or_clears_its_resource_and_leaves_the_others_alone() {
        let tried = BTreeMap::from([("down".to_string(), true), ("up".to_string(), false)]);
        let old = BTreeSet::from(["up".to_string(), "elsewhere".to_string()]);
        assert_eq!(
            marks_after(&old, &tried),
            BTreeSet::from(["down".to_string(), "elsewhere".to_string()])
        );
        assert!(marks_after(&BTreeSet::new(), &BTreeMap::new()).is_empty());
    }

    #[test]
    fn each_key_gets_the_outcome_of_each_resource_it_was_sent_to() {
        use sink::tests::{delivery, resource, FakeSink};
        let (ok, down) = (resource("ok"), resource("down"));
        let ds = vec![delivery(&down, "a1"), delivery(&ok, "a1"), delivery(&ok, "b2")];
        let sink = FakeSink {
            failing: vec!["down".into()],
            ..FakeSink::default()
        };
        let records = deliver_all(&sink, &ds, 8);
        let tried: Vec<(String, BTreeMap<String, bool>)> = tried_by_key(&ds, &records)
            .into_iter()
            .map(|(d, t)| (d.body.key.id.clone(), t))
            .collect();
        assert_eq!(
            tried,
            [
                (
                    "a1".to_string(),
                    BTreeMap::from([("down".to_string(), true), ("ok".to_string(), false)])
                ),
                ("b2".to_string(), BTreeMap::from([("ok".to_string(), false)])),
            ]
        );
    }

    /// The notify stage on the in-memory key store (issue 13: notify generic over the
    /// port): an apply records the event on the source, and a renotify within the
    /// cooldown is refused before anything is sent.
    mod on_the_port {
        use std::sync::Arc;

        use super::*;
        use crate::diff::{Action, DiffItem};
        use crate::domain::key::{KeyClass, KeyFlags, KeyObject, KeyType};
        use crate::domain::outcome::Status;
        use crate::hsm::memory::MemoryStore;

        fn plan(notify: &str) -> Plan {
            let dir = tempfile::tempdir().unwrap();
            let text = format!(
                "version: 1\nclusters:\n  src: {{module: /x.so, token: {{label: a}}, credentials: {{role: crypto-user, user: u, pin: {{env: P}}}}}}\n  dst: {{module: /x.so, token: {{label: b}}, cloned_from: src, credentials: {{role: crypto-user, user: u, pin: {{env: P}}}}}}\nsync:\n  - name: s\n    source: src\n    targets: [dst]\n    keys:\n      - id: \"01\"\n{notify}"
            );
            crate::plan::validate::validate(&dir.path().join("p.yaml"), "p.yaml", text)
                .unwrap()
                .plan
        }

        #[test]
        fn an_apply_records_on_the_source_and_a_renotify_in_the_cooldown_is_refused() {
            let store = MemoryStore::default();
            let key = Arc::new(store.add(
                "src",
                KeyObject {
                    handle: Handle::fixture(0),
                    class: KeyClass::SecretKey,
                    key_type: KeyType::Aes,
                    id: vec![1],
                    label: "k".into(),
                    flags: KeyFlags::default(),
                    value_len: Some(32),
                    public_parts: None,
                    fingerprint: crate::domain::fingerprint::Fingerprint::Deferred,
                },
                b"0123456789abcdef0123456789abcdef",
            ));
            let diff = Diff {
                items: vec![DiffItem {
                    sync: "s".into(),
                    source: "src".into(),
                    target: "dst".into(),
                    key: key.key_ref(),
                    action: Action::Create,
                    reason: None,
                    reasons: Vec::new(),
                    detail: None,
                    source_key: Some(key.clone()),
                    target_key: None,
                    mechanism: None,
                }],
                notes: Vec::new(),
            };
            let ok = Outcome {
                status: Status::Ok,
                error: None,
                duration_ms: 1,
                fingerprint: key.fingerprint.known().map(String::from),
                note: None,
                attempts: 1,
            };
            // No resources: the event is recorded all the same (CONTRACT.md §5).
            let done = after_apply(&plan(""), &store, &diff, &[ok], Limits::new(Some(2), Some(2)));
            assert!(
                done.records.is_empty() && done.warnings.is_empty(),
                "{:?}",
                done.warnings
            );
            let on_src = RecordSession::find_data(&store.open_session("src").unwrap(), "").unwrap();
            assert_eq!(on_src.len(), 1, "one record, on the source");
            assert!(RecordSession::find_data(&store.open_session("dst").unwrap(), "")
                .unwrap()
                .is_empty());

            // Resources added since: notify is refused within the cooldown, nothing sent.
            let with_resource = plan("    notify:\n      - name: r\n        url: http://127.0.0.1:9/hook\n");
            let sel = Selection {
                sync: None,
                key: None,
                failed_only: false,
            };
            match renotify(
                &with_resource,
                &store,
                &sel,
                Duration::from_millis(1),
                Limits::new(None, Some(2)),
            )
            .unwrap()
            {
                Renotify::Refused(why) => assert!(why[0].contains("was synced at"), "{why:?}"),
                other => panic!("not refused: {other:?}"),
            }
        }
    }
}
