//! The notification stage's memory: each key's last lifecycle event, as a [`KeyState`]
//! record (JSON) kept where a fresh CI runner sees it (CONTRACT.md §5, §6).
//!
//! Today that is the SOURCE token: a private data object named
//! `hsm-sync/state/<class>/<id>` (`CKA_APPLICATION` = `hsm-sync`; [`crate::hsm::records`]
//! says where its record lives). Everything that knows this sits behind the small
//! functions of this file ([`read_all`], [`reread`], [`write`], [`record_events`]), so a
//! state port with file and database backends (issue 13) replaces them and nothing else.

use std::collections::{BTreeSet, HashMap};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::claim::Claim;
use super::lifecycle::Lifecycle;
use super::wire::KeyInfo;
use super::{parse_time, time_millis};
use crate::domain::event::Event;
use crate::hsm::{DataObject, HsmError, KeyStore, RecordSession, STATE_PREFIX};

/// The value of a key's state object on the source token (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct KeyState {
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
    /// The resources whose last delivery of this event failed, by name, sorted: what
    /// `notify --failed` re-sends. Absent in records of earlier versions and when
    /// nothing failed (the field is left out then, so those versions read it too).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub failed: BTreeSet<String>,
}

impl KeyState {
    /// The record of an event, not yet claimed.
    pub(crate) fn of(l: &Lifecycle, notified_at: Option<SystemTime>) -> KeyState {
        KeyState {
            version: 1,
            event: l.event,
            at: time_millis(l.at),
            notified_at: notified_at.map(time_millis),
            sync: l.sync.clone(),
            source: l.source.clone(),
            targets: l.targets.clone(),
            key: l.key.clone(),
            claim: None,
            failed: BTreeSet::new(),
        }
    }

    /// The event this record keeps (none when its time does not parse).
    pub(crate) fn lifecycle(&self) -> Option<Lifecycle> {
        Some(Lifecycle {
            sync: self.sync.clone(),
            source: self.source.clone(),
            key: self.key.clone(),
            event: self.event,
            targets: self.targets.clone(),
            at: parse_time(&self.at)?,
        })
    }
}

// Defined here rather than with the wire types: the name of a record is the store's.
impl KeyInfo {
    /// The name of this key's state object (`hsm-sync/state/<class>/<id-hex>`; keys
    /// without an id are named by their label in hex, as they are matched by label
    /// across clusters).
    pub(crate) fn state_label(&self) -> String {
        format!("{STATE_PREFIX}{}", self.identity())
    }
}

/// One key's record as read from its token: the object it is in, and what it says.
pub(crate) type Stored = (DataObject, KeyState);

/// Every state record on the session's token, by name (as `find_data` orders them). An
/// object whose record does not parse, or names another key, is no record.
pub(crate) fn read_all(s: &impl RecordSession) -> Result<Vec<Stored>, HsmError> {
    Ok(s.find_data(STATE_PREFIX)?
        .into_iter()
        .filter_map(|d| read_state(&d).map(|st| (d, st)))
        .collect())
}

/// A record as it is on the token now: re-read by handle, so another process's change
/// is seen (SoftHSM re-reads an object whose file changed). `None` when it is gone.
pub(crate) fn reread(s: &impl RecordSession, d: &DataObject) -> Result<Option<Stored>, HsmError> {
    Ok(s.reread_data(d.handle)?.and_then(|d| read_state(&d).map(|st| (d, st))))
}

/// Replaces the record in `old` with `state`.
pub(crate) fn write(s: &impl RecordSession, old: &DataObject, state: &KeyState) -> Result<(), HsmError> {
    s.update_record(old, &state_json(state))
}

fn create(s: &impl RecordSession, state: &KeyState) -> Result<DataObject, HsmError> {
    s.create_record(&state.key.state_label(), &state_json(state))
}

fn state_json(state: &KeyState) -> String {
    // Serializing plain strings and enums cannot fail; an empty record would read back as
    // "no recorded event", never as a wrong one.
    serde_json::to_string(state).unwrap_or_default()
}

fn read_state(d: &DataObject) -> Option<KeyState> {
    let st: KeyState = serde_json::from_slice(d.record()).ok()?;
    (st.key.state_label() == d.name()).then_some(st)
}

/// Writes the records of `events` on one source token, one find for all, then
/// `workers` sessions side by side; returns a warning per key (or for the token) whose
/// event could not be recorded.
pub(crate) fn record_events(
    tokens: &impl KeyStore,
    source: &str,
    events: &[&Lifecycle],
    workers: usize,
) -> Vec<String> {
    let warn = |what: String, e: HsmError| {
        format!("could not record the lifecycle event of {what} on `{source}` (notify cannot enforce its cooldown for it): {e}")
    };
    // The existing state objects, read by `workers` sessions (at 1 ms per call, one
    // session reading 10,000 of them was 10 s of every apply that recorded anything).
    let found = tokens.open_session(source).and_then(|s| {
        let handles = s.data_handles()?;
        crate::inventory::in_chunks(tokens, source, &s, &handles, workers, |s, &h| {
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
        let s = match tokens.open_session(source) {
            Ok(s) => s,
            Err(e) => return vec![warn(format!("{} key(s)", share.len()), e)],
        };
        let mut made: HashMap<String, DataObject> = HashMap::new();
        let mut warnings = Vec::new();
        for l in share {
            let state = KeyState::of(l, None);
            let base = l.key.state_label();
            let result = match made.get(&base).or_else(|| existing.get(&base)) {
                Some(d) => write(&s, d, &state),
                None => create(&s, &state).map(|d| {
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

/// Writes the failed marks an apply's deliveries left (`marks`: state label → the
/// resources whose delivery failed) into the records of one source token, which
/// [`record_events`] has just written without any; returns a warning per key (or for
/// the token) whose marks could not be written. Only runs with a failed delivery get
/// here, so a healthy apply pays nothing for it.
pub(crate) fn mark_failed(
    tokens: &impl KeyStore,
    source: &str,
    marks: &HashMap<String, BTreeSet<String>>,
) -> Vec<String> {
    let warn = |what: String, e: HsmError| {
        format!("could not record the failed deliveries of {what} on `{source}` (`notify --failed` will not re-send them): {e}")
    };
    let stored = match tokens.open_session(source).and_then(|s| Ok((read_all(&s)?, s))) {
        Ok(found) => found,
        Err(e) => return vec![warn(format!("{} key(s)", marks.len()), e)],
    };
    let (states, s) = stored;
    let mut warnings = Vec::new();
    for (d, st) in states {
        let Some(failed) = marks.get(d.name()) else { continue };
        let new = KeyState {
            failed: failed.clone(),
            ..st
        };
        if let Err(e) = write(&s, &d, &new) {
            warnings.push(warn(format!("key {}", new.key.name()), e));
        }
    }
    warnings
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn key() -> KeyInfo {
        KeyInfo::sample("a1")
    }

    #[test]
    fn state_labels_name_the_class_and_the_id_or_the_label_in_hex() {
        let key = key();
        assert_eq!(key.state_label(), "hsm-sync/state/secret-key/a1");
        let unnamed = KeyInfo {
            id: String::new(),
            label: "my key".into(),
            ..key.clone()
        };
        assert_eq!(unnamed.state_label(), "hsm-sync/state/secret-key/label-6d79206b6579");
    }

    #[test]
    fn a_record_keeps_its_event_to_the_millisecond_and_reads_back_as_written() {
        let l = Lifecycle {
            sync: "main".into(),
            source: "primary".into(),
            key: key(),
            event: Event::Deleted,
            targets: vec!["dr".into()],
            at: SystemTime::UNIX_EPOCH + Duration::from_millis(1_800_000_000_250),
        };
        let st = KeyState::of(&l, None);
        assert_eq!(st.at, "2027-01-15T08:00:00.250Z");
        assert_eq!(st.lifecycle(), Some(l));
        let json = serde_json::to_value(&st).unwrap();
        assert_eq!(json["event"], "deleted");
        assert!(json.get("claim").is_none(), "no claim, no field: {json}");
        assert!(json.get("failed").is_none(), "nothing failed, no field: {json}");
        let back: KeyState = serde_json::from_value(json).unwrap();
        assert_eq!(back, st);
    }

    #[test]
    fn failed_marks_read_back_and_a_record_of_an_earlier_version_has_none() {
        // As versions before `notify --failed` wrote it: no `failed` field.
        let old = r#"{"version":1,"event":"synced","at":"2027-01-15T08:00:00.250Z","notified_at":null,
            "sync":"main","source":"primary","targets":["dr"],
            "key":{"id":"a1","label":"k","class":"secret-key","key_type":"aes","fingerprint":null}}"#;
        let st: KeyState = serde_json::from_str(old).unwrap();
        assert!(st.failed.is_empty(), "missing field: nothing failed");
        let marked = KeyState {
            failed: BTreeSet::from(["object-storage".to_string()]),
            ..st
        };
        let json = serde_json::to_value(&marked).unwrap();
        assert_eq!(json["failed"], serde_json::json!(["object-storage"]));
        assert_eq!(serde_json::from_value::<KeyState>(json).unwrap(), marked);
    }
}
