//! The notification stage's memory, as the state port keeps it ([`crate::state`]): each
//! key's last lifecycle event as a [`KeyState`] record. This file turns events into
//! records and back; where the records live is the plan's `state` backend.

use std::time::SystemTime;

use super::lifecycle::Lifecycle;
use crate::state::{parse_time, time_millis};

pub(crate) use crate::state::KeyState;

impl KeyState {
    /// The record of an event.
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
            failed: Default::default(),
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::domain::event::{Event, KeyInfo};

    #[test]
    fn a_record_keeps_its_event_to_the_millisecond_and_reads_back_as_written() {
        let l = Lifecycle {
            sync: "main".into(),
            source: "primary".into(),
            key: KeyInfo::sample("a1"),
            event: Event::Deleted,
            targets: vec!["dr".into()],
            at: SystemTime::UNIX_EPOCH + Duration::from_millis(1_800_000_000_250),
        };
        let st = KeyState::of(&l, None);
        assert_eq!(st.at, "2027-01-15T08:00:00.250Z");
        assert_eq!(st.lifecycle(), Some(l));
        let back: KeyState = serde_json::from_str(&st.to_json()).unwrap();
        assert_eq!(back, st);
    }
}
