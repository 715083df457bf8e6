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
//! - `store`: each key's record of its last event, kept in the plan's state backend
//!   ([`crate::state`], which also holds the claims that keep two `notify` runs from both
//!   sending);
//! - `cooldown`: the refusal rule of `notify` (pure);
//! - `sink`: the `Sink` port, bounded parallel delivery, and the HTTP sink (the only
//!   file naming the HTTP client);
//! - `wire`: the body a resource receives ([`EventBody`], [`KeyInfo`]).
//!
//! What the operator sees is printed by [`crate::render::print_notifications`].

mod cooldown;
mod lifecycle;
mod sink;
mod store;
mod wire;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, SystemTime};

use miette::Diagnostic;

pub(crate) use wire::KeyInfo;

use lifecycle::{deliveries, lifecycles, wanted_by};
use sink::http::HttpSink;
use sink::{deliver_all, Delivery, Sink};
use store::KeyState;

use crate::diff::Diff;
use crate::domain::handle::Handle;
use crate::hsm::{HsmError, KeySession, KeyStore};
use crate::limits::Limits;
use crate::plan::{KeyMatcher, Plan, SelectorError, SelectorValue, SyncEntry};
use crate::report::{DeliveryStatus, NotificationRecord, Outcome};
use crate::state::{Claim, StateError, StateStore};

/// Errors of `hsm-sync notify` before anything is sent.
#[derive(Debug, thiserror::Error, Diagnostic)]
pub(crate) enum NotifyError {
    /// A token operation failed.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Hsm(#[from] HsmError),
    /// The state backend failed.
    #[error(transparent)]
    #[diagnostic(transparent)]
    State(#[from] StateError),
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

/// How long the token backend's claim protocol waits between making its claims and
/// checking them ([`crate::state::token`]). Longer than the gap between reading a key's
/// claims and making its own (two PKCS#11 calls, about a millisecond; a run measures it
/// and backs off past half of this), so a run that read before another's claim has made
/// its own by then. The file and postgres backends claim in one locked step instead.
pub(crate) const DEFAULT_CLAIM_SETTLE: Duration = Duration::from_millis(500);

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
        label: k.label.to_string(),
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
    /// State records that could not be written (the sync itself stands).
    pub warnings: Vec<String>,
    /// What the state backend did besides (a migration of earlier records), to tell.
    pub notes: Vec<String>,
}

impl AfterApply {
    /// Whether anything failed (exit 3).
    pub(crate) fn failed(&self) -> bool {
        !self.warnings.is_empty() || any_failed(&self.records)
    }
}

/// After an apply: records every key's lifecycle event in the state backend (CONTRACT.md
/// §5: per key, resources or not, so the cooldown holds for resources added later), then
/// announces it to the resources that want it. The state is written first, so that a
/// run killed while delivering still leaves the event where `notify` finds it. One write
/// per source (the token backend: one page, whatever the key count; issue 15), and a
/// second only when a delivery failed (its failed marks).
pub(crate) fn after_apply(
    plan: &Plan,
    store: &dyn StateStore,
    diff: &Diff,
    outcomes: &[Outcome],
    limits: Limits,
) -> AfterApply {
    let events = lifecycles(diff, outcomes, SystemTime::now());
    let mut out = AfterApply::default();
    let mut by_source: BTreeMap<&str, Vec<KeyState>> = BTreeMap::new();
    for l in &events {
        by_source.entry(&l.source).or_default().push(KeyState::of(l, None));
    }
    for (source, records) in &by_source {
        match store.append(source, records) {
            Ok(notes) => out.notes.extend(notes),
            Err(e) => out.warnings.push(format!(
                "could not record the lifecycle events of {} key(s) of `{source}` in the {} state backend (notify cannot enforce its cooldown for them): {e}",
                records.len(),
                store.name()
            )),
        }
    }
    let ds = deliveries(plan, &events, false);
    out.records = deliver_all(&HttpSink, &ds, limits.notify_in_flight());
    // The records were written without failed marks; the keys with a failed delivery get
    // theirs now, for `notify --failed`: their latest record again, marked.
    let mut marked: BTreeMap<&str, Vec<KeyState>> = BTreeMap::new();
    for (d, tried) in tried_by_key(&ds, &out.records) {
        let failed = marks_after(&BTreeSet::new(), &tried);
        if failed.is_empty() {
            continue;
        }
        let id = d.body.key.identity();
        let Some(last) = by_source
            .get(d.body.source.as_str())
            .and_then(|rs| rs.iter().rev().find(|r| r.identity() == id))
        else {
            continue;
        };
        marked
            .entry(&last.source)
            .or_default()
            .push(KeyState { failed, ..last.clone() });
    }
    for (source, records) in marked {
        if let Err(e) = store.append(source, &records) {
            out.warnings.push(format!(
                "could not record the failed deliveries of {} key(s) of `{source}` (`notify --failed` will not re-send them): {e}",
                records.len()
            ));
        }
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
        let i = *at.entry(d.body.key.identity()).or_insert_with(|| {
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
fn failed_resources(entry: &SyncEntry, st: &KeyState) -> BTreeSet<String> {
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
    /// The key's identity (how the state names it).
    identity: String,
    key: KeyInfo,
    state: Option<KeyState>,
}

/// `hsm-sync notify`: re-sends the latest lifecycle event of the selected keys, unless
/// one of them is within the cooldown or another run is notifying it (then nothing is
/// sent at all). With [`Selection::failed_only`], only the keys and resources whose last
/// delivery failed, and the cooldown does not hold. The records and claims are `store`'s;
/// `tokens` lists the sources' keys. `settle` is the token backend's claim wait
/// ([`DEFAULT_CLAIM_SETTLE`]); `limits` bounds the deliveries in flight.
pub(crate) fn renotify<S: KeyStore>(
    plan: &Plan,
    tokens: &S,
    store: &dyn StateStore,
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
    let mut sources: Vec<&str> = Vec::new();
    for entry in &entries {
        if !sources.contains(&entry.source.as_str()) {
            sources.push(&entry.source);
        }
    }
    let mut skipped = Vec::new();
    let mut by_source = candidates(plan, &entries, tokens, store, &sources, sel, &mut skipped)?;
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
                    .is_some_and(|st| !failed_resources(c.entry, st).is_empty())
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
                .and_then(|st| cooldown::refusal(&c.key, st, cooldown, now))
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

    // 3. Claim the keys in the state backend (the cooldown checked again under the
    //    claim), then send; the claims go whatever happened (a crashed run's expire).
    let mine = Claim::new();
    let check =
        |k: &KeyInfo, st: Option<&KeyState>| st.and_then(|st| cooldown::refusal(k, st, cooldown, SystemTime::now()));
    let mut claimed: Vec<&str> = Vec::new();
    let mut refused = Vec::new();
    let mut failure = None;
    for (source, list) in by_source.iter_mut() {
        if list.is_empty() {
            continue;
        }
        let keys: Vec<KeyInfo> = list.iter().map(|c| c.key.clone()).collect();
        claimed.push(source);
        match store.claim(source, &keys, &mine, settle, &check) {
            Ok(got) if got.refused.is_empty() => {
                for c in list.iter_mut() {
                    c.state = got.states.get(&c.identity).cloned();
                    if c.state.is_none() {
                        refused.push(format!(
                            "the record of key {} vanished while this run claimed it (another hsm-sync run?); nothing was sent",
                            c.key.name()
                        ));
                    }
                }
            }
            Ok(got) => refused.extend(got.refused),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
        if !refused.is_empty() {
            break;
        }
    }
    let outcome = match (failure, refused.is_empty()) {
        (Some(e), _) => Err(NotifyError::from(e)),
        (None, true) => Ok(send_and_record(
            &HttpSink,
            plan,
            store,
            &by_source,
            sel.failed_only,
            limits.notify_in_flight(),
        )),
        (None, false) => Ok(Renotify::Refused(refused)),
    };
    for source in claimed {
        let keys: Vec<KeyInfo> = by_source
            .get(source)
            .map(|l| l.iter().map(|c| c.key.clone()).collect())
            .unwrap_or_default();
        let _ = store.release(source, &keys, &mine);
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
fn candidates<'p, S: KeyStore>(
    plan: &'p Plan,
    entries: &[&'p SyncEntry],
    tokens: &S,
    store: &dyn StateStore,
    sources: &[&'p str],
    sel: &Selection<'_>,
    skipped: &mut Vec<String>,
) -> Result<BTreeMap<&'p str, Vec<Candidate<'p>>>, NotifyError> {
    let mut by_source: BTreeMap<&str, Vec<Candidate<'_>>> = BTreeMap::new();
    for source in sources {
        let keys = tokens.open_session(source)?.list_keys()?;
        let states = store.read(source)?;
        // By identity, and the candidates so far: lookups per key, not scans (a scan per
        // key was quadratic in the keys of a large notify run).
        let by_id: HashMap<String, &KeyState> = states.iter().map(|st| (st.identity(), st)).collect();
        let mut listed: HashSet<String> = HashSet::new();
        let list = by_source.entry(*source).or_default();
        for entry in entries.iter().filter(|e| e.source == *source) {
            let mut push = |key: KeyInfo, handle: Option<Handle>| {
                if sel.key.as_ref().is_some_and(|m| !picks(m, &key, handle)) {
                    return;
                }
                let identity = key.identity();
                if listed.contains(&identity) {
                    return;
                }
                let state = by_id.get(&identity).map(|st| (*st).clone());
                // The resources are those of the entry the event happened under.
                let owner = match &state {
                    None => Some(*entry),
                    Some(st) => match entries.iter().find(|e| e.name == st.sync) {
                        Some(e) => Some(*e),
                        None if plan.syncs.iter().any(|e| e.name == st.sync) => None,
                        None => Some(*entry),
                    },
                };
                let Some(owner) = owner else {
                    skipped.push(format!(
                        "key {}: its last event happened under sync `{}`, not selected: skipped",
                        key.name(),
                        state.map(|st| st.sync).unwrap_or_default()
                    ));
                    return;
                };
                listed.insert(identity.clone());
                list.push(Candidate {
                    entry: owner,
                    identity,
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
            for st in states.iter().filter(|st| st.sync == entry.name) {
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
        Some(st) if !c.entry.notify.iter().any(|r| wanted_by(r, st.event)) => Some(format!(
            "key {}: no resource of sync `{}` wants `{}` events: skipped",
            c.key.name(),
            c.entry.name,
            st.event.name()
        )),
        Some(_) => None,
    }
}

/// Step 4 of `notify`: sends the claimed keys' events (with `failed_only`, to the
/// resources whose last delivery failed, as the records read under the claim say), then
/// records the outcome, one write per source: `notified_at` for keys with at least one
/// delivery made, and each resource tried marked failed or cleared.
fn send_and_record<'p>(
    sink: &impl Sink,
    plan: &'p Plan,
    store: &dyn StateStore,
    by_source: &BTreeMap<&'p str, Vec<Candidate<'p>>>,
    failed_only: bool,
    in_flight: usize,
) -> Renotify {
    let mut events = Vec::new();
    let mut only: HashMap<String, BTreeSet<String>> = HashMap::new();
    for c in by_source.values().flatten() {
        let Some(st) = &c.state else { continue };
        if let Some(mut l) = st.lifecycle() {
            // The candidate's entry: the event's own, or the one selecting the key when
            // the event's entry is gone from the plan.
            l.sync = c.entry.name.clone();
            events.push(l);
            if failed_only {
                only.insert(c.identity.clone(), failed_resources(c.entry, st));
            }
        }
    }
    let mut ds = deliveries(plan, &events, true);
    if failed_only {
        ds.retain(|d| {
            only.get(&d.body.key.identity())
                .is_some_and(|rs| rs.contains(&d.resource.name))
        });
    }
    let records = deliver_all(sink, &ds, in_flight);
    let sent = sent_keys(&ds, &records);
    let tried: HashMap<String, BTreeMap<String, bool>> = tried_by_key(&ds, &records)
        .into_iter()
        .map(|(d, t)| (d.body.key.identity(), t))
        .collect();
    let sent_at = SystemTime::now();
    let mut warnings = Vec::new();
    for (source, list) in by_source {
        let mut news = Vec::new();
        for c in list {
            let Some(st) = &c.state else { continue };
            let Some(tried) = tried.get(&c.identity) else {
                continue;
            };
            let mut new = st.clone();
            if sent.contains(&c.identity) {
                new.notified_at = Some(crate::state::time_millis(sent_at));
            }
            new.failed = marks_after(&st.failed, tried);
            if new.notified_at != st.notified_at || new.failed != st.failed {
                news.push(new);
            }
        }
        if let Err(e) = store.append(source, &news) {
            warnings.push(format!(
                "could not record the notification of {} key(s) of `{source}`: {e}",
                news.len()
            ));
        }
    }
    Renotify::Done {
        records,
        skipped: Vec::new(),
        warnings,
    }
}

/// The identities of the keys with at least one delivery made (records come back in
/// delivery order).
fn sent_keys(ds: &[Delivery<'_>], records: &[NotificationRecord]) -> HashSet<String> {
    ds.iter()
        .zip(records)
        .filter(|(_, r)| r.status == DeliveryStatus::Sent)
        .map(|(d, _)| d.body.key.identity())
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
        assert_eq!(sent, HashSet::from([key("a1").identity()]));
        let after = AfterApply {
            records,
            warnings: Vec::new(),
            notes: Vec::new(),
        };
        assert!(after.failed(), "one failed delivery fails the apply");
        let all_sent = AfterApply {
            records: after
                .records
                .into_iter()
                .filter(|r| r.status == DeliveryStatus::Sent)
                .collect(),
            warnings: Vec::new(),
            notes: Vec::new(),
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
                    id: smallvec::smallvec![1],
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
            let state = crate::state::token::TokenState::new(&store, Default::default());
            let done = after_apply(&plan(""), &state, &diff, &[ok], Limits::new(Some(2), Some(2)));
            assert!(
                done.records.is_empty() && done.warnings.is_empty(),
                "{:?}",
                done.warnings
            );
            use crate::hsm::RecordSession;
            let objects = |c: &str| {
                let s = store.open_session(c).unwrap();
                let hs = s.data_handles().unwrap();
                hs.into_iter()
                    .filter_map(|h| s.reread_data(h).unwrap())
                    .collect::<Vec<_>>()
            };
            let on_src = objects("src");
            assert_eq!(on_src.len(), 1, "one page, on the source");
            assert!(on_src[0].label.starts_with(crate::state::token::PAGE_PREFIX));
            assert!(objects("dst").is_empty());

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
                &state,
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
