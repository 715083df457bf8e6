//! What a notification says (CONTRACT.md §5): the JSON body POSTed to a resource, and the
//! key as the body and the state records name it. Field names and order are the
//! contract; a sink sends these, it does not shape them.

use serde::{Deserialize, Serialize};

use crate::domain::event::Event;
pub(crate) use crate::domain::event::KeyInfo;

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
