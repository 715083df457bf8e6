//! Lifecycle events: what happened to a key that its associated resources are told of
//! (CONTRACT.md §5), and the delivery limits a plan's `notify` resources default to.
//!
//! One type serves the plan (which events a resource wants), the state records (the last
//! event of each key) and the wire (the `event` of a notification body and of a report's
//! notification record). Its JSON names are fixed here, not derived from declaration order.

use std::time::Duration;

use serde::{Deserialize, Serialize};

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
