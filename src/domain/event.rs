//! Lifecycle events: what happened to a key that its associated resources are told of
//! (CONTRACT.md §5), and the delivery limits a plan's `notify` resources default to.
//!
//! [`KeyInfo`] is the key as events name it (a notification body, a state record).
//!
//! One type serves the plan (which events a resource wants), the state records (the last
//! event of each key) and the wire (the `event` of a notification body and of a report's
//! notification record). Its JSON names are fixed here, not derived from declaration order.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::key::{KeyClass, KeyType};

/// Time limit of one delivery attempt when the plan sets none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Retries after a failed attempt when the plan sets none.
pub const DEFAULT_RETRIES: u32 = 3;
/// The most retries a plan may ask for.
pub const MAX_RETRIES: u32 = 10;

/// A lifecycle event of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Event {
    /// After a create or update.
    #[serde(rename = "synced")]
    Synced,
    /// After a delete.
    #[serde(rename = "deleted")]
    Deleted,
}

impl Event {
    /// Every event, in the order a resource that names none wants them.
    pub const ALL: [Event; 2] = [Event::Synced, Event::Deleted];

    /// `synced` or `deleted`: the name in plans, state records, bodies and reports.
    pub fn name(self) -> &'static str {
        match self {
            Event::Synced => "synced",
            Event::Deleted => "deleted",
        }
    }
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
    /// The class as messages and state labels spell it (fixed here, not taken from serde).
    fn class_name(&self) -> Option<&'static str> {
        self.class.map(|c| match c {
            KeyClass::SecretKey => "secret-key",
            KeyClass::PrivateKey => "private-key",
            KeyClass::PublicKey => "public-key",
        })
    }

    /// How the key is named in messages: its id (else its label), with its label and
    /// class, since the two halves of a key pair share an id.
    pub fn name(&self) -> String {
        let class = self.class_name().unwrap_or("unknown class");
        if self.id.is_empty() {
            format!("label:{} ({class})", self.label)
        } else {
            format!("{} ({}, {class})", self.id, self.label)
        }
    }

    /// The key's identity as text, the same in every run: `<class>/<id-hex>`, or
    /// `<class>/label-<label-hex>` for a key without an id (matched by label across
    /// clusters). Events are grouped by it and state records are named after it.
    pub fn identity(&self) -> String {
        let class = self.class_name().unwrap_or("unknown");
        if self.id.is_empty() {
            // In hex: a label may hold spaces, and an object's name ends at the first.
            format!("{class}/label-{}", hex::encode(&self.label))
        } else {
            format!("{class}/{}", self.id)
        }
    }
}

#[cfg(test)]
impl KeyInfo {
    /// A secret AES key with this id, labelled `k`: the key of the notify unit tests.
    pub fn sample(id: &str) -> KeyInfo {
        KeyInfo {
            id: id.into(),
            label: "k".into(),
            class: Some(KeyClass::SecretKey),
            key_type: Some(KeyType::Aes),
            fingerprint: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_serialize_to_their_names() {
        for e in Event::ALL {
            assert_eq!(serde_json::to_value(e).unwrap(), e.name());
            let back: Event = serde_json::from_value(serde_json::json!(e.name())).unwrap();
            assert_eq!(back, e);
        }
    }
}
