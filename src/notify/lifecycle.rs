//! Lifecycle derivation: which events an apply made, and who hears of them. Pure: from
//! the diff, the job outcomes and the plan's resources, no token and no network.
//!
//! An event is one (sync, source, key, event) with every target where a job of that kind
//! succeeded: `synced` after a create or update, `deleted` after a delete (CONTRACT.md §5).

use std::collections::BTreeMap;
use std::time::SystemTime;

use super::sink::Delivery;
use super::wire::{EventBody, KeyInfo};
use crate::diff::{Action, Diff};
use crate::domain::event::Event;
use crate::plan::{NotifyTarget, Plan};
use crate::report::{Outcome, Status};

/// One event of one key: what a notification announces and a state record keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Lifecycle {
    /// Sync entry.
    pub(crate) sync: String,
    /// Source cluster.
    pub(crate) source: String,
    /// The key.
    pub(crate) key: KeyInfo,
    /// What happened.
    pub(crate) event: Event,
    /// Where it happened, each target once, in diff order.
    pub(crate) targets: Vec<String>,
    /// When.
    pub(crate) at: SystemTime,
}

impl Lifecycle {
    /// The body announcing this event (its time in whole seconds).
    pub(crate) fn body(&self, renotify: bool) -> EventBody {
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
}

/// The events of an apply: for each (sync, source, key, event) the targets where a job
/// of that kind succeeded, ordered by sync, source, key identity and event.
pub(crate) fn lifecycles(diff: &Diff, outcomes: &[Outcome], at: SystemTime) -> Vec<Lifecycle> {
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
            .or_else(|| {
                item.target_key
                    .as_ref()
                    .and_then(|k| k.fingerprint.known().map(String::from))
            });
        let key = KeyInfo {
            id: item.key.id.clone(),
            label: item.key.label.clone(),
            class: item.key.class,
            key_type: item.key.key_type,
            fingerprint,
        };
        let slot = (item.sync.to_string(), item.source.to_string(), key.identity(), event);
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

/// Whether a resource wants to hear of this event.
pub(crate) fn wanted_by(resource: &NotifyTarget, event: Event) -> bool {
    resource.events.contains(&event)
}

/// The deliveries announcing `events`: one per (event, resource of its sync entry that
/// wants it), in event order. An event of an entry gone from the plan has none.
pub(crate) fn deliveries<'a>(plan: &'a Plan, events: &[Lifecycle], renotify: bool) -> Vec<Delivery<'a>> {
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::diff::DiffItem;
    use crate::domain::key::{KeyClass, KeyRef, KeyType};

    fn item(target: &str, id: &str, action: Action) -> DiffItem {
        DiffItem {
            sync: Arc::from("main"),
            source: Arc::from("primary"),
            target: Arc::from(target),
            key: KeyRef {
                id: id.into(),
                label: format!("key-{id}"),
                class: Some(KeyClass::SecretKey),
                key_type: Some(KeyType::Aes),
                handle: None,
            },
            action,
            reason: None,
            reasons: Vec::new(),
            detail: None,
            source_key: None,
            target_key: None,
            mechanism: None,
        }
    }

    fn diff(items: Vec<DiffItem>) -> Diff {
        Diff {
            items,
            notes: Vec::new(),
        }
    }

    fn outcome(status: Status, fingerprint: Option<&str>) -> Outcome {
        Outcome {
            status,
            error: None,
            duration_ms: 1,
            fingerprint: fingerprint.map(String::from),
            note: None,
            attempts: 1,
        }
    }

    fn at() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    #[test]
    fn creates_and_updates_are_synced_and_deletes_are_deleted() {
        let diff = diff(vec![
            item("dr", "a1", Action::Create),
            item("dr", "b2", Action::Update),
            item("dr", "c3", Action::Delete),
            item("dr", "d4", Action::Unchanged),
            item("dr", "e5", Action::Conflict),
            item("dr", "f6", Action::Blocked),
        ]);
        let ok: Vec<Outcome> = diff.items.iter().map(|_| outcome(Status::Ok, None)).collect();
        let events: Vec<(String, Event)> = lifecycles(&diff, &ok, at())
            .into_iter()
            .map(|l| (l.key.id, l.event))
            .collect();
        assert_eq!(
            events,
            [
                ("a1".to_string(), Event::Synced),
                ("b2".to_string(), Event::Synced),
                ("c3".to_string(), Event::Deleted)
            ]
        );
    }

    #[test]
    fn one_event_per_key_lists_each_target_where_its_job_succeeded() {
        let diff = diff(vec![
            item("dr", "a1", Action::Create),
            item("dr2", "a1", Action::Update),
            item("dr3", "a1", Action::Create),
            item("dr", "a1", Action::Create),
        ]);
        let outcomes = [
            outcome(Status::Ok, Some("fp")),
            outcome(Status::Ok, None),
            outcome(Status::Failed, None),
            outcome(Status::Ok, None),
        ];
        let events = lifecycles(&diff, &outcomes, at());
        assert_eq!(events.len(), 1, "{events:?}");
        let l = &events[0];
        assert_eq!(l.targets, ["dr", "dr2"]);
        assert_eq!(l.key.fingerprint.as_deref(), Some("fp"));
        let body = l.body(false);
        assert_eq!(body.at, "2027-01-15T08:00:00Z");
        assert!(!body.renotify);
        assert_eq!((body.sync.as_str(), body.source.as_str()), ("main", "primary"));
    }

    #[test]
    fn failed_and_skipped_jobs_make_no_event() {
        let diff = diff(vec![item("dr", "a1", Action::Create), item("dr", "b2", Action::Delete)]);
        let outcomes = [outcome(Status::Failed, None), outcome(Status::Skipped, None)];
        assert!(lifecycles(&diff, &outcomes, at()).is_empty());
    }

    #[test]
    fn deliveries_go_to_the_resources_of_the_entry_that_want_the_event() {
        let dir = tempfile::tempdir().unwrap();
        let text = "version: 1\nclusters:\n  primary: {module: /x.so, token: {label: a}, credentials: {role: crypto-user, user: u, pin: {env: P}}}\n  dr: {module: /x.so, token: {label: b}, cloned_from: primary, credentials: {role: crypto-user, user: u, pin: {env: P}}}\nsync:\n  - name: main\n    source: primary\n    targets: [dr]\n    keys:\n      - label: \"key-*\"\n    notify:\n      - {name: all, url: \"http://127.0.0.1:9/a\"}\n      - {name: gone, url: \"http://127.0.0.1:9/b\", events: [deleted]}\n";
        let plan = crate::plan::validate::validate(&dir.path().join("p.yaml"), "p.yaml", text.to_string())
            .unwrap()
            .plan;
        let diff = diff(vec![item("dr", "a1", Action::Create), item("dr", "b2", Action::Delete)]);
        let outcomes = [outcome(Status::Ok, None), outcome(Status::Ok, None)];
        let mut events = lifecycles(&diff, &outcomes, at());
        let ds = deliveries(&plan, &events, true);
        let sent: Vec<(&str, &str, Event, bool)> = ds
            .iter()
            .map(|d| {
                (
                    d.resource.name.as_str(),
                    d.body.key.id.as_str(),
                    d.body.event,
                    d.body.renotify,
                )
            })
            .collect();
        assert_eq!(
            sent,
            [
                ("all", "a1", Event::Synced, true),
                ("all", "b2", Event::Deleted, true),
                ("gone", "b2", Event::Deleted, true)
            ]
        );
        events[0].sync = "removed".into();
        assert_eq!(
            deliveries(&plan, &events, false).len(),
            2,
            "an entry gone from the plan has none"
        );
    }
}
