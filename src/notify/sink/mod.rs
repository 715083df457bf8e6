//! The sink port: where a notification goes. A [`Sink`] delivers one notification (with
//! whatever retries it makes) and says how that went; [`deliver_all`] runs many side by
//! side with a bound. [`http`] is today's one sink (CONTRACT.md §5); another (a queue, a
//! chat hook) is one more implementation here and one line where it is chosen.

pub(crate) mod http;

use crate::plan::NotifyTarget;
use crate::report::{DeliveryStatus, NotificationRecord};

use super::wire::EventBody;

/// A delivery to make: one body to one resource.
#[derive(Debug)]
pub(crate) struct Delivery<'a> {
    /// The sync entry whose resource this is.
    pub(crate) sync: String,
    /// The resource.
    pub(crate) resource: &'a NotifyTarget,
    /// What it is told.
    pub(crate) body: EventBody,
}

impl Delivery<'_> {
    /// The record of this delivery before any attempt: failed, nothing sent yet.
    pub(crate) fn unsent(&self) -> NotificationRecord {
        NotificationRecord {
            sync: self.sync.clone(),
            resource: self.resource.name.clone(),
            key_id: self.body.key.id.clone(),
            event: self.body.event,
            status: DeliveryStatus::Failed,
            http_status: None,
            error: None,
            attempts: Some(0),
        }
    }
}

/// Where notifications go.
pub(crate) trait Sink: Sync {
    /// Delivers one notification, retrying as the resource allows, and records how it
    /// ended. Never fails the run: a delivery that cannot be made is a `failed` record.
    fn deliver(&self, delivery: &Delivery<'_>) -> NotificationRecord;
}

/// Delivers every notification through `sink`, at most `in_flight` at once (the run's
/// [`crate::limits::Limits::notify_in_flight`]); the records come back in input order.
pub(crate) fn deliver_all<S: Sink>(sink: &S, ds: &[Delivery<'_>], in_flight: usize) -> Vec<NotificationRecord> {
    use rayon::prelude::*;
    if ds.is_empty() {
        return Vec::new();
    }
    let threads = ds.len().min(in_flight).max(1);
    match rayon::ThreadPoolBuilder::new().num_threads(threads).build() {
        Ok(pool) => pool.install(|| ds.par_iter().map(|d| sink.deliver(d)).collect()),
        Err(_) => ds.iter().map(|d| sink.deliver(d)).collect(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;
    use crate::domain::event::Event;
    use crate::notify::wire::KeyInfo;

    /// A sink that records every call and fails the resources it is told to.
    #[derive(Default)]
    pub(crate) struct FakeSink {
        pub(crate) calls: Mutex<Vec<(String, String)>>,
        pub(crate) failing: Vec<String>,
    }

    impl Sink for FakeSink {
        fn deliver(&self, d: &Delivery<'_>) -> NotificationRecord {
            if let Ok(mut calls) = self.calls.lock() {
                calls.push((d.resource.name.clone(), d.body.key.id.clone()));
            }
            let mut rec = d.unsent();
            rec.attempts = Some(1);
            if !self.failing.contains(&d.resource.name) {
                rec.status = DeliveryStatus::Sent;
                rec.http_status = Some(204);
            }
            rec
        }
    }

    pub(crate) fn resource(name: &str) -> NotifyTarget {
        NotifyTarget {
            name: name.into(),
            url: format!("http://127.0.0.1:9/{name}"),
            events: Event::ALL.to_vec(),
            bearer_env: None,
            timeout: Duration::from_secs(1),
            retries: 0,
        }
    }

    /// A `synced` delivery of key `id` to `resource`.
    pub(crate) fn delivery<'a>(resource: &'a NotifyTarget, id: &str) -> Delivery<'a> {
        Delivery {
            sync: "main".into(),
            resource,
            body: EventBody {
                event: Event::Synced,
                key: KeyInfo::sample(id),
                source: "primary".into(),
                targets: vec!["dr".into()],
                sync: "main".into(),
                at: "2027-01-15T08:00:00Z".into(),
                renotify: false,
            },
        }
    }

    #[test]
    fn every_delivery_is_made_once_and_records_keep_input_order() {
        let (a, b) = (resource("a"), resource("b"));
        let ids: Vec<String> = (0..20).map(|i| format!("{i:02x}")).collect();
        let ds: Vec<Delivery<'_>> = ids.iter().flat_map(|id| [delivery(&a, id), delivery(&b, id)]).collect();
        let sink = FakeSink {
            failing: vec!["b".into()],
            ..FakeSink::default()
        };
        let records = deliver_all(&sink, &ds, 8);
        assert_eq!(records.len(), ds.len());
        for (d, r) in ds.iter().zip(&records) {
            assert_eq!(
                (r.resource.as_str(), r.key_id.as_str()),
                (d.resource.name.as_str(), d.body.key.id.as_str())
            );
            assert_eq!((r.sync.as_str(), r.event), ("main", Event::Synced));
            let want = if d.resource.name == "b" {
                DeliveryStatus::Failed
            } else {
                DeliveryStatus::Sent
            };
            assert_eq!(r.status, want);
        }
        let mut calls = sink.calls.into_inner().unwrap();
        calls.sort();
        let mut want: Vec<(String, String)> = ds
            .iter()
            .map(|d| (d.resource.name.clone(), d.body.key.id.clone()))
            .collect();
        want.sort();
        assert_eq!(calls, want, "each delivery once");
    }

    #[test]
    fn nothing_to_deliver_makes_no_call() {
        let sink = FakeSink::default();
        assert!(deliver_all(&sink, &[], 8).is_empty());
        assert!(sink.calls.into_inner().unwrap().is_empty());
    }

    #[test]
    fn an_unsent_record_is_failed_with_no_attempt() {
        let a = resource("a");
        let r = delivery(&a, "a1").unsent();
        assert_eq!(
            (r.status, r.attempts, r.http_status),
            (DeliveryStatus::Failed, Some(0), None)
        );
        assert_eq!(serde_json::to_value(&r).unwrap()["status"], "failed");
    }
}
