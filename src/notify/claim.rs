//! The claim protocol that keeps two `hsm-sync notify` runs from both sending for one key
//! (CONTRACT.md §6: "two runs never both send a renotification").
//!
//! Each run reads the key's record, writes its claim (a random nonce) into it, waits the
//! settle time, and reads it again; only the run whose claim is still there sends
//! (Fischer's mutual exclusion: whoever wrote last holds the key; two runs cannot both
//! hold it). A claim lives in the key's state record rather than in an object of its own
//! because SoftHSM's object index can miss an object another process created just before
//! this one created its own, while an existing object's attributes are always re-read.
//!
//! The settle time is the caller's to choose ([`DEFAULT_CLAIM_SETTLE`] unless a test
//! asks otherwise at the command edge); nothing here reads the environment.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use super::cooldown::refusal;
use super::store::{self, Stored};
use super::wire::KeyInfo;
use super::{parse_time, time_millis, Candidate};
use crate::hsm::{HsmError, RecordSession};

/// A claim younger than this is another run at work; an older one is a crashed run's.
pub(crate) const CLAIM_TTL: Duration = Duration::from_secs(300);

/// How long a run waits between writing its claims and checking them. Longer than the
/// gap between reading a key's state and writing a claim into it (two PKCS#11 calls,
/// about a millisecond; a run measures it and backs off past half of this), so a run
/// that read before another's claim has written its own by then.
pub(crate) const DEFAULT_CLAIM_SETTLE: Duration = Duration::from_millis(500);

/// A claim, written into a key's state record by a `notify` run about to send: "this
/// run is notifying this key".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Claim {
    /// Random, per run.
    pub nonce: String,
    /// When it was made (RFC 3339 UTC); older than [`CLAIM_TTL`] it is a crashed run's.
    pub at: String,
    /// The claiming process, for the message.
    pub pid: u32,
}

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

    fn is_fresh(&self, now: SystemTime) -> bool {
        parse_time(&self.at).is_some_and(|t| now.duration_since(t).unwrap_or_default() < CLAIM_TTL)
    }

    fn refusal(&self, key: &KeyInfo) -> String {
        format!(
            "another hsm-sync run (pid {}) is notifying key {}; nothing was sent",
            self.pid,
            key.name()
        )
    }
}

/// The sessions of the sources, by name.
pub(crate) type Sessions<'p, S> = HashMap<&'p str, S>;

/// The candidate's record as it is on the token now.
fn current(s: &impl RecordSession, c: &Candidate<'_>) -> Result<Option<Stored>, HsmError> {
    match &c.state {
        None => Ok(None),
        Some((d, _)) => store::reread(s, d),
    }
}

/// Claims every candidate for this run (`mine`): reads, checks and claims each key in
/// one short step, waits `settle`, and checks the claims held. Returns why nothing may
/// be sent (empty: every key is this run's, and each candidate's state is re-read).
/// Every key claimed is pushed to `held`, whatever the outcome, for [`release`].
///
/// Fischer's exclusion holds when every run writes its claim less than `settle` after
/// reading the state: measured here, and a run that took longer backs off instead of
/// trusting it. A key within the cooldown is refused here too, as read just before its
/// claim.
pub(crate) fn claim_all<'p, S: RecordSession>(
    sessions: &Sessions<'p, S>,
    by_source: &mut BTreeMap<&'p str, Vec<Candidate<'p>>>,
    mine: &Claim,
    settle: Duration,
    cooldown: Duration,
    held: &mut Vec<(&'p str, usize)>,
) -> Result<Vec<String>, HsmError> {
    let mut refused = Vec::new();
    for (source, list) in by_source.iter() {
        let s = &sessions[source];
        for (i, c) in list.iter().enumerate() {
            let started = Instant::now();
            let Some((d, st)) = current(s, c)? else {
                continue;
            };
            let now = SystemTime::now();
            if let Some(other) = st.claim.as_ref().filter(|x| x.nonce != mine.nonce && x.is_fresh(now)) {
                refused.push(other.refusal(&c.key));
                continue;
            }
            if let Some(why) = refusal(&c.key, &st, cooldown, now) {
                refused.push(why);
                continue;
            }
            let mut claimed = st;
            claimed.claim = Some(mine.clone());
            store::write(s, &d, &claimed)?;
            held.push((*source, i));
            if started.elapsed() * 2 >= settle {
                refused.push(format!(
                    "claiming key {} took {} ms, too long to be sure no other run is notifying it; nothing was sent (try again)",
                    c.key.name(),
                    started.elapsed().as_millis()
                ));
            }
        }
    }
    if !refused.is_empty() {
        return Ok(refused);
    }
    std::thread::sleep(settle);

    // Still ours? Whoever wrote last holds the key; a run that lost says so.
    for (source, list) in by_source.iter_mut() {
        let s = &sessions[source];
        for c in list.iter_mut() {
            c.state = current(s, c)?;
            match c.state.as_ref().and_then(|(_, st)| st.claim.as_ref()) {
                Some(x) if x.nonce == mine.nonce => {}
                Some(other) => refused.push(other.refusal(&c.key)),
                None => refused.push(format!(
                    "the state of key {} changed while this run claimed it (another hsm-sync run?); nothing was sent",
                    c.key.name()
                )),
            }
        }
    }
    Ok(refused)
}

/// Clears our claim from a key's record, if it is still ours.
pub(crate) fn release(s: &impl RecordSession, c: &Candidate<'_>, mine: &Claim) -> Result<(), HsmError> {
    if let Some((d, mut st)) = current(s, c)? {
        if st.claim.as_ref().is_some_and(|x| x.nonce == mine.nonce) {
            st.claim = None;
            store::write(s, &d, &st)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
