//! The cooldown rule of `hsm-sync notify` (CONTRACT.md §2 exit 4, §5): a key synced,
//! deleted or notified less than `options.notify_cooldown` ago is refused, as the managed
//! KMS does. Pure: a record and a clock in, a refusal or none out.

use std::time::{Duration, SystemTime};

use super::wire::KeyInfo;
use crate::state::{parse_time, KeyState};

/// The last time the key was synced, deleted or notified (the later of the event and
/// `notified_at`), and what happened then; the cooldown runs from it. `None` when the
/// record's time does not parse.
pub(crate) fn last_activity(state: &KeyState) -> Option<(SystemTime, &'static str)> {
    let at = parse_time(&state.at)?;
    let notified = state.notified_at.as_deref().and_then(parse_time);
    Some(match notified {
        Some(n) if n > at => (n, "notified"),
        _ => (at, state.event.name()),
    })
}

/// Why `key` may not be notified at `now`, or `None` when it may: the message names the
/// last activity and the first second at which the key is eligible again.
pub(crate) fn refusal(key: &KeyInfo, state: &KeyState, cooldown: Duration, now: SystemTime) -> Option<String> {
    let (last, what) = last_activity(state)?;
    let until = last.checked_add(cooldown)?;
    // Shown in whole seconds, rounded up: at the time printed the key is eligible.
    let shown = match until.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) if d.subsec_nanos() > 0 => until + Duration::from_nanos(u64::from(1_000_000_000 - d.subsec_nanos())),
        _ => until,
    };
    (now < until).then(|| {
        format!(
            "key {} was {what} at {}; notify cannot be performed until {}",
            key.name(),
            humantime::format_rfc3339_seconds(last),
            humantime::format_rfc3339_seconds(shown)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::event::Event;
    use crate::state::time_millis;

    const HOUR: Duration = Duration::from_secs(3600);

    fn t0() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn key() -> KeyInfo {
        KeyInfo::sample("a1")
    }

    fn synced_at(t: SystemTime) -> KeyState {
        KeyState {
            version: 1,
            event: Event::Synced,
            at: time_millis(t),
            notified_at: None,
            sync: "main".into(),
            source: "primary".into(),
            targets: vec!["dr".into()],
            key: key(),
            claim: None,
            failed: Default::default(),
        }
    }

    #[test]
    fn cooldown_runs_from_the_last_activity() {
        let key = key();
        let t0 = t0();
        let mut st = synced_at(t0);
        let hour = HOUR;
        let msg = refusal(&key, &st, hour, t0 + Duration::from_secs(60)).unwrap();
        assert!(msg.contains("was synced at 2027-01-15T08:00:00Z"), "{msg}");
        assert!(msg.contains("cannot be performed until 2027-01-15T09:00:00Z"), "{msg}");
        assert!(refusal(&key, &st, hour, t0 + hour).is_none());
        let half = KeyState {
            at: time_millis(t0 + Duration::from_millis(500)),
            ..st.clone()
        };
        let msg = refusal(&key, &half, hour, t0 + Duration::from_secs(60)).unwrap();
        assert!(msg.contains("until 2027-01-15T09:00:01Z"), "rounded up: {msg}");
        st.notified_at = Some(time_millis(t0 + hour));
        let msg = refusal(&key, &st, hour, t0 + hour + Duration::from_secs(1)).unwrap();
        assert!(msg.contains("was notified at"), "{msg}");
    }

    #[test]
    fn inside_the_cooldown_is_refused() {
        let st = synced_at(t0());
        for after in [Duration::ZERO, Duration::from_secs(1), HOUR - Duration::from_millis(1)] {
            let msg = refusal(&key(), &st, HOUR, t0() + after);
            assert!(
                msg.is_some_and(|m| m.starts_with("key a1 (k, secret-key) was synced at")),
                "{after:?}"
            );
        }
    }

    #[test]
    fn outside_the_cooldown_is_allowed() {
        let st = synced_at(t0());
        assert!(refusal(&key(), &st, HOUR, t0() + HOUR).is_none());
        assert!(refusal(&key(), &st, HOUR, t0() + 2 * HOUR).is_none());
        assert!(refusal(&key(), &st, Duration::ZERO, t0()).is_none(), "no cooldown");
        let deleted = KeyState {
            event: Event::Deleted,
            ..st
        };
        let msg = refusal(&key(), &deleted, HOUR, t0()).unwrap();
        assert!(msg.contains("was deleted at"), "{msg}");
    }

    #[test]
    fn a_later_notified_at_restarts_the_cooldown_and_an_earlier_one_does_not() {
        let mut st = synced_at(t0());
        st.notified_at = Some(time_millis(t0() + 2 * HOUR));
        assert_eq!(last_activity(&st), Some((t0() + 2 * HOUR, "notified")));
        assert!(refusal(&key(), &st, HOUR, t0() + 2 * HOUR + Duration::from_secs(59)).is_some());
        assert!(refusal(&key(), &st, HOUR, t0() + 3 * HOUR).is_none());

        st.notified_at = Some(time_millis(t0() - HOUR));
        assert_eq!(last_activity(&st), Some((t0(), "synced")), "the sync is later");
        let msg = refusal(&key(), &st, HOUR, t0() + Duration::from_secs(1)).unwrap();
        assert!(msg.contains("was synced at"), "{msg}");
    }

    #[test]
    fn a_record_whose_time_does_not_parse_is_never_refused() {
        let st = KeyState {
            at: "yesterday".into(),
            ..synced_at(t0())
        };
        assert_eq!(last_activity(&st), None);
        assert!(refusal(&key(), &st, HOUR, t0()).is_none());
    }
}
