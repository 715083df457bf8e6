//! What the state backends keep: each key's last lifecycle event ([`KeyState`]) and the
//! claims of `notify` runs ([`Claim`]). Both are persisted JSON (habit 17): every backend
//! stores exactly these encodings, and runs of every version read what earlier ones wrote.

use std::collections::BTreeSet;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::domain::event::{Event, KeyInfo};

/// RFC 3339 UTC with milliseconds: the times of state records and claims.
pub(crate) fn time_millis(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// A time written by [`time_millis`] (or any RFC 3339 time); `None` if it does not parse.
pub(crate) fn parse_time(s: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339(s).ok()
}

/// A key's last lifecycle event, as every backend keeps it (JSON, version 1).
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
    /// A claim written into the record by versions that claimed in place; read so those
    /// records parse, never written (claims are kept apart now).
    #[serde(default, skip_serializing)]
    pub claim: Option<Claim>,
    /// The resources whose last delivery of this event failed, by name, sorted: what
    /// `notify --failed` re-sends. Absent in records of earlier versions and when
    /// nothing failed (the field is left out then, so those versions read it too).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub failed: BTreeSet<String>,
}

impl KeyState {
    /// The key this record is about, as every backend names it (`<class>/<id-hex>`).
    pub(crate) fn identity(&self) -> String {
        self.key.identity()
    }

    /// The record as one line of JSON. Serializing plain strings and enums cannot fail;
    /// an empty record would read back as "no recorded event", never as a wrong one.
    pub(crate) fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
impl KeyState {
    /// A record of `event` at `at` for [`KeyInfo::sample`]`(id)`, synced by `main` from
    /// `src` to `dst`: the record of the state backends' unit tests.
    pub(crate) fn sample(id: &str, event: Event, at: &str) -> KeyState {
        KeyState {
            version: 1,
            event,
            at: at.into(),
            notified_at: None,
            sync: "main".into(),
            source: "src".into(),
            targets: vec!["dst".into()],
            key: KeyInfo::sample(id),
            claim: None,
            failed: BTreeSet::new(),
        }
    }
}

/// A claim by a `notify` run about to send: "this run is notifying this key".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Claim {
    /// Random, per run.
    pub nonce: String,
    /// When it was made (RFC 3339 UTC); older than [`CLAIM_TTL`] it is a crashed run's.
    pub at: String,
    /// The claiming process, for the message.
    pub pid: u32,
}

/// A claim younger than this is another run at work; an older one is a crashed run's.
pub(crate) const CLAIM_TTL: std::time::Duration = std::time::Duration::from_secs(300);

impl Claim {
    /// This run's claim: a fresh nonce, now, this process.
    pub(crate) fn new() -> Claim {
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

    /// Whether the claim is still another run at work at `now` (not a crashed run's).
    pub(crate) fn is_fresh(&self, now: SystemTime) -> bool {
        parse_time(&self.at).is_some_and(|t| now.duration_since(t).unwrap_or_default() < CLAIM_TTL)
    }

    /// Why a key this claim holds is refused to another run.
    pub(crate) fn refusal(&self, key: &KeyInfo) -> String {
        format!(
            "another hsm-sync run (pid {}) is notifying key {}; nothing was sent",
            self.pid,
            key.name()
        )
    }
}

/// The latest record of each key, from records in the order they were written (a later
/// one replaces an earlier one of the same key), sorted by identity.
pub(crate) fn latest(records: impl IntoIterator<Item = KeyState>) -> Vec<KeyState> {
    let mut by: std::collections::BTreeMap<String, KeyState> = std::collections::BTreeMap::new();
    for r in records {
        by.insert(r.identity(), r);
    }
    by.into_values().collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn record(event: Event, at: &str) -> KeyState {
        KeyState::sample("a1", event, at)
    }

    #[test]
    fn a_record_reads_back_as_written_and_never_writes_a_claim() {
        let mut st = record(Event::Deleted, "2027-01-15T08:00:00.250Z");
        let json: serde_json::Value = serde_json::from_str(&st.to_json()).unwrap();
        assert_eq!(json["event"], "deleted");
        assert!(json.get("failed").is_none(), "nothing failed, no field: {json}");
        st.claim = Some(Claim::new());
        let json: serde_json::Value = serde_json::from_str(&st.to_json()).unwrap();
        assert!(json.get("claim").is_none(), "claims are kept apart: {json}");
        let back: KeyState = serde_json::from_value(json).unwrap();
        assert_eq!(back.claim, None);
        assert_eq!(back.at, st.at);
    }

    #[test]
    fn records_of_earlier_versions_with_a_claim_and_no_failed_field_parse() {
        let old = r#"{"version":1,"event":"synced","at":"2027-01-15T08:00:00.250Z","notified_at":null,
            "sync":"main","source":"primary","targets":["dr"],
            "claim":{"nonce":"00","at":"2027-01-15T08:00:00Z","pid":7},
            "key":{"id":"a1","label":"k","class":"secret-key","key_type":"aes","fingerprint":null}}"#;
        let st: KeyState = serde_json::from_str(old).unwrap();
        assert!(st.failed.is_empty());
        assert_eq!(st.claim.map(|c| c.pid), Some(7));
    }

    #[test]
    fn the_latest_record_of_a_key_wins_in_write_order() {
        let a = record(Event::Synced, "2027-01-15T08:00:00.000Z");
        let b = record(Event::Deleted, "2027-01-15T07:00:00.000Z");
        let other = KeyState {
            key: KeyInfo::sample("b2"),
            ..a.clone()
        };
        let out = latest([a, other.clone(), b.clone()]);
        assert_eq!(out, vec![b, other], "write order, not the time written in it");
    }

    #[test]
    fn a_claim_is_fresh_until_its_ttl_and_names_its_run() {
        let c = Claim::new();
        assert_eq!(c.nonce.len(), 32);
        assert_ne!(c.nonce, Claim::new().nonce, "a nonce per run");
        let made = parse_time(&c.at).unwrap();
        assert!(c.is_fresh(made));
        assert!(c.is_fresh(made + CLAIM_TTL - Duration::from_secs(1)));
        assert!(!c.is_fresh(made + CLAIM_TTL), "a crashed run's claim expires");
        let msg = c.refusal(&KeyInfo::sample("a1"));
        assert!(
            msg.starts_with(&format!("another hsm-sync run (pid {})", std::process::id())),
            "{msg}"
        );
    }
}
