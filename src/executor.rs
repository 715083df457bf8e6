//! Stage 6: apply the diff's changes on a dedicated rayon pool. Each key is wrapped once
//! on its source and unwrapped on every target that lacks it; every copy is verified by
//! its fingerprint. Each worker holds its own sessions (a `Session` is not `Sync`).
//! Every job's outcome is collected: a failure never stops the others.
//!
//! Transient PKCS#11 errors (device hiccups, lost sessions) are retried with backoff on
//! a fresh session. Before an unwrap is retried, the target is searched for a copy the
//! failed attempt may have left: a verified one is adopted, so a retry never duplicates.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rayon::prelude::*;

use crate::diff::{Action, Diff, DiffItem};
use crate::domain::handle::Handle;
use crate::domain::key::{KeyClass, KeyObject};
use crate::domain::kind::{self, Proof, Travel};
use crate::domain::outcome::{Outcome, Status};
use crate::domain::wire::WireFormat;
use crate::hsm::{is_transient, public_fingerprint, HsmError, KeySession, KeyStore, Wrapped};
use crate::interrupt::Stop;
use crate::progress::Reporter;

/// Tries per operation, and the first backoff (doubled after each failure).
const ATTEMPTS: u32 = 4;
const BACKOFF: Duration = Duration::from_millis(25);

/// Work for one worker step.
enum Unit {
    /// Wrap one source key once, unwrap on each target (diff item indices).
    Copy { source: String, items: Vec<usize> },
    /// Set drifted attributes on one target.
    Update(usize),
    /// Delete from one target.
    Delete(usize),
}

/// A worker's sessions, opened on first use and reopened after a transient error; by
/// cluster and wire format (a copy's sessions wrap in its pair's format, which is not
/// the run's where a source's targets read different ones).
struct Sessions<'t, S: KeyStore> {
    store: &'t S,
    // By format, then cluster: looked up by `&str` on every call of a job, never
    // allocating a key on this hot path.
    open: HashMap<Option<WireFormat>, HashMap<String, S::Session>>,
    /// The format the unit at work moves keys in (`None`: the run's).
    format: Option<WireFormat>,
}

impl<S: KeyStore> Sessions<'_, S> {
    fn get(&mut self, cluster: &str) -> Result<&S::Session, HsmError> {
        let (store, format) = (self.store, self.format);
        let open = self.open.entry(format).or_default();
        if !open.contains_key(cluster) {
            open.insert(cluster.to_string(), store.open_session_in(cluster, format)?);
        }
        Ok(&open[cluster])
    }

    /// Closes this worker's session on `cluster` in the current format.
    fn drop_session(&mut self, cluster: &str) {
        if let Some(open) = self.open.get_mut(&self.format) {
            open.remove(cluster);
        }
    }

    /// Runs `op` on a session of `cluster`, retrying transient errors with backoff on a
    /// fresh session. Returns the result and the number of attempts.
    fn retry<T>(
        &mut self,
        cluster: &str,
        mut op: impl FnMut(&S::Session) -> Result<T, HsmError>,
    ) -> (Result<T, HsmError>, u32) {
        let mut attempt = 1;
        loop {
            let r = self.get(cluster).and_then(&mut op);
            match r {
                Err(e) if is_transient(&e) && attempt < ATTEMPTS => {
                    self.drop_session(cluster);
                    std::thread::sleep(BACKOFF * 2u32.pow(attempt - 1));
                    attempt += 1;
                }
                r => return (r, attempt),
            }
        }
    }
}

fn outcome(start: Instant, attempts: u32, r: Result<(Option<String>, Option<String>), String>) -> Outcome {
    let (status, error, fingerprint, note) = match r {
        Ok((fp, note)) => (Status::Ok, None, fp, note),
        Err(e) => (Status::Failed, Some(e), None, None),
    };
    Outcome {
        status,
        error,
        duration_ms: start.elapsed().as_millis() as u64,
        fingerprint,
        note,
        attempts,
    }
}

/// Runs every change of `diff` with `threads` workers. `allow_destroy` gates deletions
/// (skipped otherwise). Returns one outcome per diff item, in order.
/// Once `stop` is requested no new unit starts, and a copy goes to no further target;
/// what is in flight finishes and is verified, and the rest is `skipped`.
pub(crate) fn execute<S: KeyStore>(
    diff: &Diff,
    store: &S,
    threads: usize,
    allow_destroy: bool,
    reporter: &dyn Reporter,
    stop: &Stop,
) -> Vec<Outcome> {
    let mut units = Vec::new();
    // One copy unit per source key and wire format: each wrap serves the targets that
    // read its format.
    let mut copies: HashMap<(std::sync::Arc<str>, Handle, Option<WireFormat>), usize> = HashMap::new();
    let mut per_target: Vec<(String, u64)> = Vec::new();
    for (i, it) in diff.items.iter().enumerate() {
        let runs = match it.action {
            Action::Create => {
                let Some(k) = &it.source_key else { continue };
                let slot = *copies
                    .entry((it.source.clone(), k.handle, it.mechanism))
                    .or_insert_with(|| {
                        units.push(Unit::Copy {
                            source: it.source.to_string(),
                            items: Vec::new(),
                        });
                        units.len() - 1
                    });
                if let Unit::Copy { items, .. } = &mut units[slot] {
                    items.push(i);
                }
                true
            }
            Action::Update => {
                units.push(Unit::Update(i));
                true
            }
            Action::Delete if allow_destroy => {
                units.push(Unit::Delete(i));
                true
            }
            _ => false,
        };
        if runs {
            match per_target.iter_mut().find(|(t, _)| **t == *it.target) {
                Some((_, n)) => *n += 1,
                None => per_target.push((it.target.to_string(), 1)),
            }
        }
    }
    reporter.begin(&per_target);
    // One set of sessions per worker thread, opened on first use and kept to the end.
    // (rayon's `map_init` calls its init once per split of the work, not once per
    // thread: dozens of session sets, each opened and closed, which the benchmark showed
    // costing 45% at 5 ms per call; issue 6.) Each worker locks only its own slot.
    let workers = threads.max(1);
    let slots: Vec<Mutex<Sessions<S>>> = (0..workers)
        .map(|_| {
            Mutex::new(Sessions {
                store,
                open: HashMap::new(),
                format: None,
            })
        })
        .collect();
    let run = || -> Vec<Vec<(usize, Outcome)>> {
        units
            .par_iter()
            .map(|unit| {
                if stop.requested() {
                    return Vec::new();
                }
                let slot = rayon::current_thread_index().unwrap_or(0) % workers;
                let mut sessions = slots[slot].lock().unwrap_or_else(|p| p.into_inner());
                let done = run_unit(&mut sessions, diff, unit, stop);
                for (i, o) in &done {
                    reporter.job_done(&diff.items[*i].target, o.status == Status::Ok);
                }
                done
            })
            .collect()
    };
    let results = match rayon::ThreadPoolBuilder::new().num_threads(threads.max(1)).build() {
        Ok(pool) => pool.install(run),
        // A pool that cannot start is no reason to fail: run on the global one.
        Err(_) => run(),
    };
    reporter.end();
    let mut outcomes: Vec<Option<Outcome>> = vec![None; diff.items.len()];
    for (i, o) in results.into_iter().flatten() {
        outcomes[i] = Some(o);
    }
    outcomes
        .into_iter()
        .zip(&diff.items)
        .map(|(o, it)| o.unwrap_or_else(|| not_run(it, allow_destroy)))
        .collect()
}

/// The outcome of an item no worker ran.
fn not_run(it: &DiffItem, allow_destroy: bool) -> Outcome {
    let (status, error, fingerprint) = match it.action {
        Action::Unchanged => (Status::Ok, None, it.fingerprint().map(String::from)),
        Action::Delete if !allow_destroy => (
            Status::Skipped,
            Some("deletion not allowed: pass --allow-destroy".to_string()),
            None,
        ),
        _ => (Status::Skipped, None, None),
    };
    Outcome {
        status,
        error,
        duration_ms: 0,
        fingerprint,
        note: None,
        attempts: 0,
    }
}

fn run_unit<S: KeyStore>(
    sessions: &mut Sessions<'_, S>,
    diff: &Diff,
    unit: &Unit,
    stop: &Stop,
) -> Vec<(usize, Outcome)> {
    // A copy moves its key in its pair's format; updates and deletions wrap nothing.
    sessions.format = match unit {
        Unit::Copy { items, .. } => items.first().and_then(|i| diff.items[*i].mechanism),
        _ => None,
    };
    match unit {
        Unit::Copy { source, items } => copy(sessions, diff, source, items, stop),
        Unit::Update(i) => {
            let start = Instant::now();
            let it = &diff.items[*i];
            let (Some(src), Some(dst)) = (&it.source_key, &it.target_key) else {
                return Vec::new();
            };
            let (r, n) = sessions.retry(&it.target, |s| s.set_usage(dst.handle, src));
            vec![(
                *i,
                outcome(
                    start,
                    n,
                    r.map(|_| (it.fingerprint().map(String::from), None))
                        .map_err(|e| e.to_string()),
                ),
            )]
        }
        Unit::Delete(i) => {
            let start = Instant::now();
            let it = &diff.items[*i];
            let Some(k) = &it.target_key else { return Vec::new() };
            let (r, n) = sessions.retry(&it.target, |s| s.destroy(k.handle));
            vec![(
                *i,
                outcome(start, n, r.map(|_| (None, None)).map_err(|e| e.to_string())),
            )]
        }
    }
}

/// The key material as it travels: a wrapped blob, or (public keys) the source's public
/// attributes, which travel in the clear.
enum Material {
    Wrapped(Wrapped),
    Public,
}

/// A proof that an odd-length HMAC copy is the same key: a challenge and the source's MAC.
type HmacCheck = Option<(Vec<u8>, Option<Vec<u8>>)>;

fn copy<S: KeyStore>(
    sessions: &mut Sessions<'_, S>,
    diff: &Diff,
    source: &str,
    items: &[usize],
    stop: &Stop,
) -> Vec<(usize, Outcome)> {
    let start = Instant::now();
    let Some(key) = items.first().and_then(|i| diff.items[*i].source_key.clone()) else {
        return Vec::new();
    };
    // The diff blocks kinds the table lacks; a key without a row would travel wrapped.
    let travel = kind::kind(key.class, key.key_type).map_or(Travel::Wrapped, |k| k.travel);
    let (material, fingerprint, attempts) = if travel == Travel::PublicAttributes {
        (Material::Public, public_fingerprint(key.key_type, key.public()), 1)
    } else {
        match sessions.retry(source, |s| s.wrap(key.handle, key.class)) {
            (Ok(b), n) => {
                // A private key's fingerprint is its public parts' (the same on every
                // make), the inventory's where it read one.
                let fp = match (key.class, key.fingerprint.known()) {
                    (KeyClass::PrivateKey, Some(known)) => known.to_string(),
                    (KeyClass::PrivateKey, None) => match sessions.retry(source, |s| s.fingerprint(&key)).0 {
                        Ok(Some(fp)) => fp,
                        Ok(None) => b.fingerprint(key.class),
                        Err(e) => {
                            let msg = format!("fingerprint on `{source}`: {e}");
                            return items
                                .iter()
                                .map(|i| (*i, outcome(start, n, Err(msg.clone()))))
                                .collect();
                        }
                    },
                    _ => b.fingerprint(key.class),
                };
                (Material::Wrapped(b), fp, n)
            }
            (Err(e), n) => {
                let msg = format!("wrap on `{source}`: {e}");
                return items
                    .iter()
                    .map(|i| (*i, outcome(start, n, Err(msg.clone()))))
                    .collect();
            }
        }
    };
    // An odd-length HMAC key arrives zero-padded: prove the copy computes the same HMACs.
    let hmac_check: Result<HmacCheck, HsmError> = if kind::proven_by_hmac(&key) {
        sessions
            .retry(source, |s| {
                let challenge = s.random(32)?;
                let mac = s.hmac(key.handle, key.key_type, &challenge)?;
                Ok(Some((challenge, mac)))
            })
            .0
    } else {
        Ok(None)
    };
    let mut out = Vec::with_capacity(items.len());
    for &i in items {
        if stop.requested() {
            break;
        }
        let start = Instant::now();
        let target = &diff.items[i].target;
        // A repair: the unverified copy an interrupted run left goes first.
        if let Some(broken) = &diff.items[i].target_key {
            let (r, _) = sessions.retry(target, |t| t.destroy(broken.handle));
            if let Err(e) = r {
                out.push((i, outcome(start, 1, Err(format!("removing the unverified copy: {e}")))));
                continue;
            }
        }
        let (r, n) = place(sessions, source, target, &key, &material, &fingerprint, &hmac_check);
        out.push((
            i,
            outcome(start, n.max(attempts), r.map(|note| (Some(fingerprint.clone()), note))),
        ));
    }
    out
}

/// Puts one copy on `target` and verifies it; returns the note for the report.
fn place<S: KeyStore>(
    sessions: &mut Sessions<'_, S>,
    source: &str,
    target: &str,
    key: &KeyObject,
    material: &Material,
    fingerprint: &str,
    hmac_check: &Result<HmacCheck, HsmError>,
) -> (Result<Option<String>, String>, u32) {
    let mut attempt = 1;
    loop {
        let made = sessions.get(target).and_then(|t| match material {
            Material::Wrapped(b) => t.unwrap_as(b, key),
            Material::Public => t.create_public(key),
        });
        match made {
            Ok(h) => {
                let t = match sessions.get(target) {
                    Ok(t) => t,
                    Err(e) => return (Err(e.to_string()), attempt),
                };
                let verified = if key.class == KeyClass::PrivateKey {
                    prove_private(sessions, source, target, h, key, fingerprint)
                } else {
                    verify(t, h, key, fingerprint, hmac_check)
                };
                if verified.is_err() {
                    // Never leave an unverified copy behind.
                    if let Ok(t) = sessions.get(target) {
                        let _ = t.destroy(h);
                    }
                }
                // What the copy does not keep because the token refused it (the ladder).
                let dropped = sessions.get(target).ok().and_then(|t| t.template_note());
                let verified = verified.map(|note| match (note, dropped) {
                    (Some(n), Some(d)) => Some(format!("{n}; {d}")),
                    (n, d) => n.or(d),
                });
                return (verified, attempt);
            }
            Err(e) if is_transient(&e) && attempt < ATTEMPTS => {
                sessions.drop_session(target);
                std::thread::sleep(BACKOFF * 2u32.pow(attempt - 1));
                attempt += 1;
                // The failed call may still have created the object: adopt a verified copy.
                match sessions.get(target).and_then(|t| t.find_like(key)) {
                    Ok(found) if found.is_empty() => {}
                    Ok(found) => {
                        let mine: Vec<&KeyObject> = found
                            .iter()
                            .filter(|k| k.fingerprint.known() == Some(fingerprint))
                            .collect();
                        return match (found.len(), mine.first()) {
                            (1, Some(_)) => (Ok(Some("adopted the copy left by an interrupted attempt".into())), attempt),
                            _ => (Err(format!("after `{e}`, {} objects of this identity are on `{target}`; left for the next plan to show", found.len())), attempt),
                        };
                    }
                    Err(_) => {} // the next attempt reports the error
                }
            }
            Err(e) => return (Err(e.to_string()), attempt),
        }
    }
}

/// Proves a private key's copy (CONTRACT §1): the copy signs a random challenge on the
/// target and the source's public half must verify it, because the same private key wraps
/// to different PKCS#8 blobs on different makes. A key that may not sign, or whose source
/// holds no public half, is proven by its fingerprint (public parts, else the wrap).
fn prove_private<S: KeyStore>(
    sessions: &mut Sessions<'_, S>,
    source: &str,
    target: &str,
    h: Handle,
    key: &KeyObject,
    fingerprint: &str,
) -> Result<Option<String>, String> {
    if key.flags.sign {
        let t = sessions.get(target).map_err(|e| e.to_string())?;
        let challenge = t.random(32).map_err(|e| format!("verify: {e}"))?;
        let signed = t
            .sign(h, key.key_type, &challenge)
            .map_err(|e| format!("verify (signing on `{target}`): {e}"))?;
        if let Some(signature) = signed {
            let s = sessions.get(source).map_err(|e| e.to_string())?;
            match s
                .verify_public(key, &challenge, &signature)
                .map_err(|e| format!("verify (on `{source}`): {e}"))?
            {
                Some(true) => {
                    return Ok(Some(
                        "proven by a signature of the copy that the source's public key verifies".into(),
                    ))
                }
                Some(false) => {
                    return Err("verify: the copy's signature does not verify under the source's public key".into())
                }
                None => {}
            }
        }
    }
    let t = sessions.get(target).map_err(|e| e.to_string())?;
    let copy = t
        .read_key_at(h)
        .map_err(|e| format!("verify: {e}"))?
        .ok_or("verify: the copy vanished")?;
    let copy_fp = t.fingerprint(&copy).map_err(|e| format!("verify: {e}"))?;
    if copy_fp.as_deref() == Some(fingerprint) {
        return Ok(None);
    }
    match t.fingerprint_at(h, key.class).map_err(|e| format!("verify: {e}"))? {
        Some(fp) if fp == fingerprint => Ok(None),
        _ => Err("verify: the copy's fingerprint differs from the source's".into()),
    }
}

fn verify(
    t: &impl KeySession,
    h: Handle,
    key: &KeyObject,
    fingerprint: &str,
    hmac_check: &Result<HmacCheck, HsmError>,
) -> Result<Option<String>, String> {
    // A secret or private copy is proven by wrapping it here (one call): the fingerprint
    // is the digest of that wrap. A public copy is read back and its public attributes
    // hashed.
    let proof = kind::kind(key.class, key.key_type).map_or(Proof::WrapDigest, |k| k.proof);
    let copy_fp = if proof == Proof::PublicAttributes {
        let copy = t
            .read_key_at(h)
            .map_err(|e| format!("verify: {e}"))?
            .ok_or("verify: the copy vanished")?;
        t.fingerprint(&copy)
    } else {
        t.fingerprint_at(h, key.class)
    }
    .map_err(|e| format!("verify: {e}"))?;
    if copy_fp.as_deref() != Some(fingerprint) {
        return Err("verify: the copy's fingerprint differs from the source's".into());
    }
    match hmac_check {
        Ok(None) => Ok(None),
        Err(e) => Err(format!("verify (HMAC on source): {e}")),
        Ok(Some((challenge, mac))) => {
            let len = key.value_len.unwrap_or(0);
            let padded = len.div_ceil(8) * 8;
            let Some(mac) = mac else {
                return Ok(Some(format!(
                    "{len}-byte generic secret stored zero-padded to {padded} bytes; too short for the token's HMAC mechanisms, so only the fingerprint was verified"
                )));
            };
            // The copy keeps the source's type, so its HMAC is of the same mechanism.
            let got = t
                .hmac(h, key.key_type, challenge)
                .map_err(|e| format!("verify (HMAC): {e}"))?;
            if got.as_ref() != Some(mac) {
                return Err("verify: the copy computes a different HMAC".into());
            }
            Ok(Some(format!(
                "{len}-byte generic secret stored zero-padded to {padded} bytes; HMAC results verified equal"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::diff::DiffItem;
    use crate::domain::key::{KeyClass, KeyFlags, KeyObject, KeyType};
    use crate::hsm::memory::{Fault, MemoryStore};
    use crate::progress::Silent;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn aes(id: u8) -> KeyObject {
        KeyObject {
            handle: Handle::fixture(0),
            class: KeyClass::SecretKey,
            key_type: KeyType::Aes,
            id: smallvec::smallvec![id],
            label: format!("k{id}").into(),
            flags: KeyFlags {
                private: true,
                sensitive: true,
                extractable: true,
                encrypt: true,
                decrypt: true,
                modifiable: true,
                ..Default::default()
            },
            value_len: Some(32),
            public_parts: None,
            fingerprint: crate::domain::fingerprint::Fingerprint::Deferred,
        }
    }

    /// The diff item creating `k` (on `src`) on `dst`.
    fn create(k: Arc<KeyObject>) -> DiffItem {
        DiffItem {
            sync: "s".into(),
            source: "src".into(),
            target: "dst".into(),
            key: k.key_ref(),
            action: Action::Create,
            reason: None,
            reasons: Vec::new(),
            detail: None,
            source_key: Some(k),
            target_key: None,
            mechanism: None,
        }
    }

    /// A store with `keys` on `src` and a diff creating each on `dst`.
    fn world(keys: &[(u8, &[u8])]) -> (MemoryStore, Diff) {
        let store = MemoryStore::default();
        let items = keys
            .iter()
            .map(|(id, material)| create(Arc::new(store.add("src", aes(*id), material))))
            .collect();
        (
            store,
            Diff {
                items,
                notes: Vec::new(),
            },
        )
    }

    fn run(store: &MemoryStore, diff: &Diff) -> Vec<Outcome> {
        execute(diff, store, 2, false, &Silent, crate::interrupt::never())
    }

    fn copies(store: &MemoryStore) -> Vec<Vec<u8>> {
        store.objects("dst").into_iter().map(|(_, m)| m).collect()
    }

    #[test]
    fn a_transient_error_is_retried_on_a_fresh_session() {
        let (store, diff) = world(&[(1, SECRET)]);
        store.fail_next("src", "wrap", Fault::Transient);
        store.fail_next("dst", "unwrap", Fault::Transient);
        let out = run(&store, &diff);
        assert_eq!(out[0].status, Status::Ok, "{:?}", out[0].error);
        assert_eq!(out[0].attempts, 2);
        assert_eq!(copies(&store), vec![SECRET.to_vec()], "exactly one copy");
    }

    #[test]
    fn a_copy_a_lost_reply_left_is_adopted_not_duplicated() {
        let (store, diff) = world(&[(1, SECRET)]);
        store.fail_next("dst", "unwrap", Fault::TransientAfterCreate);
        let out = run(&store, &diff);
        assert_eq!(out[0].status, Status::Ok, "{:?}", out[0].error);
        assert!(
            out[0].note.as_deref().unwrap_or("").contains("adopted"),
            "{:?}",
            out[0].note
        );
        assert_eq!(copies(&store).len(), 1, "the retry did not make a second copy");
        assert_eq!(store.calls("dst", "unwrap"), 1, "adopted, not unwrapped again");
    }

    #[test]
    fn a_copy_that_fails_verification_is_destroyed() {
        let (store, diff) = world(&[(1, SECRET)]);
        store.fail_next("dst", "unwrap", Fault::Corrupt);
        let out = run(&store, &diff);
        assert_eq!(out[0].status, Status::Failed);
        assert!(
            out[0].error.as_deref().unwrap_or("").contains("fingerprint differs"),
            "{:?}",
            out[0].error
        );
        assert!(copies(&store).is_empty(), "no unverified copy is left behind");
    }

    #[test]
    fn an_hmac_typed_copy_keeps_its_type_and_is_proven_by_its_hmac() {
        let (store, mut diff) = world(&[]);
        let mut key = aes(7);
        key.key_type = KeyType::Sha384Hmac;
        key.value_len = Some(52);
        key.flags = KeyFlags {
            private: true,
            sensitive: true,
            extractable: true,
            sign: true,
            verify: true,
            ..Default::default()
        };
        diff.items.push(create(Arc::new(store.add("src", key, &[7; 52]))));
        let out = run(&store, &diff);
        assert_eq!(out[0].status, Status::Ok, "{:?}", out[0].error);
        assert!(
            out[0]
                .note
                .as_deref()
                .unwrap_or("")
                .contains("HMAC results verified equal"),
            "{:?}",
            out[0].note
        );
        let copies = store.objects("dst");
        assert_eq!(copies.len(), 1);
        assert_eq!(copies[0].0.key_type, KeyType::Sha384Hmac, "never turned generic");
        assert_eq!(store.calls("dst", "hmac"), 1);
    }

    /// A diff creating one signing private key `src` holds (`material`) on `dst`.
    fn private_world(material: &[u8]) -> (MemoryStore, Diff) {
        let (store, mut diff) = world(&[]);
        let mut key = aes(9);
        key.class = KeyClass::PrivateKey;
        key.key_type = KeyType::Ec;
        key.flags.sign = true;
        diff.items.push(create(Arc::new(store.add("src", key, material))));
        (store, diff)
    }

    #[test]
    fn a_private_copy_is_proven_by_a_signature_the_source_verifies() {
        let (store, diff) = private_world(SECRET);
        let out = run(&store, &diff);
        assert_eq!(out[0].status, Status::Ok, "{:?}", out[0].error);
        assert!(
            out[0].note.as_deref().unwrap_or("").contains("signature"),
            "{:?}",
            out[0].note
        );
        assert_eq!(store.calls("dst", "sign"), 1);
        assert_eq!(store.calls("src", "verify"), 1);
    }

    #[test]
    fn a_private_copy_whose_signature_fails_is_destroyed() {
        let (store, diff) = private_world(SECRET);
        store.fail_next("dst", "unwrap", Fault::Corrupt);
        let out = run(&store, &diff);
        assert_eq!(out[0].status, Status::Failed);
        assert!(
            out[0]
                .error
                .as_deref()
                .unwrap_or("")
                .contains("signature does not verify"),
            "{:?}",
            out[0].error
        );
        assert!(copies(&store).is_empty(), "no unverified copy is left behind");
    }

    #[test]
    fn a_journaled_half_made_copy_is_replaced() {
        let (store, mut diff) = world(&[(1, SECRET)]);
        // What an interrupted run left: an object of this identity with other material.
        let broken = store.add("dst", aes(1), b"half-made");
        diff.items[0].reason = Some(crate::domain::reason::Reason::Repair);
        diff.items[0].target_key = Some(Arc::new(broken));
        let out = run(&store, &diff);
        assert_eq!(out[0].status, Status::Ok, "{:?}", out[0].error);
        assert_eq!(
            copies(&store),
            vec![SECRET.to_vec()],
            "the broken copy is gone, the real one made"
        );
    }

    #[test]
    fn a_fatal_error_fails_its_own_job_only_and_is_not_retried() {
        let (store, diff) = world(&[(1, SECRET), (2, b"fedcba9876543210fedcba9876543210")]);
        // Sessions run in parallel: make the fatal error hit key 1's wrap whichever is first.
        store.fail_next("dst", "unwrap", Fault::Fatal);
        let out = run(&store, &diff);
        let failed: Vec<_> = out.iter().filter(|o| o.status == Status::Failed).collect();
        assert_eq!(failed.len(), 1, "{out:?}");
        assert_eq!(failed[0].attempts, 1, "a fatal error is never retried");
        assert_eq!(out.iter().filter(|o| o.status == Status::Ok).count(), 1);
        assert_eq!(copies(&store).len(), 1);
    }

    #[test]
    fn after_a_stop_no_job_starts_and_the_rest_is_skipped() {
        let (store, diff) = world(&[(1, SECRET), (2, SECRET)]);
        let stop = Stop::default();
        stop.request(15);
        let out = execute(&diff, &store, 2, false, &Silent, &stop);
        assert!(out.iter().all(|o| o.status == Status::Skipped), "{out:?}");
        assert!(copies(&store).is_empty());
        assert_eq!(store.calls("src", "wrap"), 0, "nothing was started");
    }

    #[test]
    fn a_key_goes_to_every_target_from_one_wrap() {
        let (store, mut diff) = world(&[(1, SECRET)]);
        let mut second = diff.items[0].clone();
        second.target = "dst2".into();
        diff.items.push(second);
        let out = run(&store, &diff);
        assert!(out.iter().all(|o| o.status == Status::Ok), "{out:?}");
        assert_eq!(store.calls("src", "wrap"), 1, "wrapped once for both targets");
        assert_eq!(store.objects("dst2").len(), 1);
    }
}
