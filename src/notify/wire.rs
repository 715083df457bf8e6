//! What a notification says (CONTRACT.md §5): the JSON body POSTed to a resource, and the
//! key as the body and the state records name it. Field names and order are the
//! contract; a sink sends these, it does not shape them.

use serde::{Deserialize, Serialize};

use crate::domain::event::Event;
use crate::domain::key::{KeyClass, KeyType};

/// The key as a notification names it: never key material, only its fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct KeyInfo {
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
    pub(crate) fn name(&self) -> String {
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
    pub(crate) fn identity(&self) -> String {
        let class = self.class_name().unwrap_or("unknown");
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
pub(crate) struct EventBody {
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

#[cfg(test)]
impl KeyInfo {
    /// A secret AES key with this id, labelled `k`: the key of the notify unit tests.
    pub(crate) fn sample(id: &str) -> KeyInfo {
        KeyInfo {
            id: id.into(),
            label: "k".into(),
            class: Some(KeyClass::SecretKey),
            key_type: Some(KeyType::Aes),
            fingerprint: None,
        }
    }
}
