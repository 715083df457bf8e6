//! Stage 4: what each token holds. Inventories of different tokens are read side by side,
//! and each token's keys are read by several sessions at once: one search lists the
//! handles, then workers read and fingerprint them in chunks (on a network HSM every call
//! is a round trip, so a single reader would be the slowest part of a sync; issue 6).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::domain::fingerprint::Fingerprint;
pub(crate) use crate::domain::inventory::{Inventories, Inventory};
use crate::domain::key::{sort_keys, KeyClass, KeyObject, KeyType};
use crate::hsm::{HsmError, KeySession, KeyStore};

/// Which keys an inventory fingerprints (one `C_WrapKey` each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fingerprints {
    /// Every key: what `plan` shows and a saved plan's digests cover.
    All,
    /// Only what a diff compares: every key of a cluster that some sync writes to, and
    /// the keys of a source-only cluster that another cluster in scope also holds. A key
    /// to be created is fingerprinted by its copy job's own wrap instead, which saves
    /// `apply` a round trip per new key (issue 6).
    Compared,
}

/// Cached fingerprints by cluster, then by `CKA_UNIQUE_ID` (a cluster absent: no cache).
pub(crate) type FingerprintCache = HashMap<String, HashMap<String, String>>;

/// Reads the inventories of `clusters`, side by side, each with up to `workers` sessions.
/// With [`Fingerprints::Compared`], the clusters in `source_only` (no sync writes to
/// them) are read without fingerprints first; then only their keys that another cluster
/// holds are fingerprinted. That second pass waits for every inventory, so it is taken
/// only while the targets hold fewer than half as many keys as the source (a first sync):
/// when they hold about as many, every key would be wrapped anyway, and wrapping them
/// while the targets are read is faster (issue 6). Their in-flight journals are not read
/// (only targets have one).
pub(crate) fn read_all<S: KeyStore>(
    tokens: &S,
    clusters: &[&str],
    source_only: &[&str],
    fingerprints: Fingerprints,
    workers: usize,
    journals_on_tokens: bool,
    cache: &FingerprintCache,
) -> Result<Inventories, HsmError> {
    let listed = |name: &&str| tokens.listed_len(name).unwrap_or(usize::MAX);
    let most_on_a_target = clusters
        .iter()
        .filter(|n| !source_only.contains(n))
        .map(listed)
        .max()
        .unwrap_or(0);
    // Decided before reading: the inventories take login's handle lists, after which
    // `listed` no longer knows them.
    let deferred: Vec<bool> = clusters
        .iter()
        .map(|name| {
            fingerprints == Fingerprints::Compared
                && source_only.contains(name)
                && most_on_a_target.saturating_mul(2) < listed(name)
        })
        .collect();
    let mut out: Inventories = std::thread::scope(|scope| {
        let handles: Vec<_> = clusters
            .iter()
            .zip(&deferred)
            .map(|(name, &deferred)| {
                let written = !source_only.contains(name);
                scope.spawn(move || {
                    read_one(
                        tokens,
                        name,
                        workers,
                        !deferred,
                        written && journals_on_tokens,
                        cache.get(*name),
                    )
                })
            })
            .collect();
        let mut out = HashMap::new();
        for h in handles {
            let inv = h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))?;
            out.insert(inv.cluster.clone(), inv);
        }
        Ok::<_, HsmError>(out)
    })?;
    for (name, _) in clusters.iter().zip(&deferred).filter(|(_, d)| **d) {
        let Some(mut inv) = out.remove(*name) else { continue };
        let held_elsewhere: Vec<usize> = inv
            .keys
            .iter()
            .enumerate()
            .filter(|(_, k)| k.fingerprint == Fingerprint::Deferred && k.flags.extractable)
            .filter(|(_, k)| {
                let id = k.identity();
                out.values().any(|o| !o.by_identity(&id).is_empty())
            })
            .map(|(i, _)| i)
            .collect();
        fingerprint_some(tokens, &mut inv, &held_elsewhere, workers)?;
        out.insert(inv.cluster.clone(), inv);
    }
    Ok(out)
}

/// Gives `inv` its pairs' formats (`peers`: the other cluster and the pair's format) and,
/// for each format that is not its run's, the fingerprints its keys have in it: each key
/// whose fingerprint is a wrap digest, wrapped again by a session in that format (a
/// source whose targets read different formats; CONTRACT §1, one format per pair).
pub(crate) fn add_pair_formats<S: KeyStore>(
    tokens: &S,
    inv: &mut Inventory,
    peers: &[(&str, crate::domain::wire::WireFormat)],
    workers: usize,
) -> Result<(), HsmError> {
    use crate::domain::inventory::AltFingerprints;
    for (peer, f) in peers {
        inv.peer_wire.insert((*peer).to_string(), *f);
    }
    let mut extra: Vec<crate::domain::wire::WireFormat> =
        peers.iter().map(|(_, f)| *f).filter(|f| Some(*f) != inv.wire).collect();
    extra.sort_unstable_by_key(|f| f.code());
    extra.dedup();
    for f in extra {
        // A key the format cannot carry is blocked for that pair before any comparison;
        // wrapping it anyway would be refused (a strict RFC 3394 and an odd length).
        let which: Vec<usize> = (0..inv.keys.len())
            .filter(|&i| {
                wrap_digested(&inv.keys[i], inv) && crate::domain::kind::not_carried(&inv.keys[i], f).is_none()
            })
            .collect();
        let view = InFormat {
            store: tokens,
            format: f,
        };
        let first = view.open_session(&inv.cluster)?;
        let keys = &inv.keys;
        let found = in_chunks(&view, &inv.cluster, &first, &which, workers, |s, &i| {
            Ok(Some((
                keys[i].handle,
                Fingerprint::tried(s.fingerprint_at(keys[i].handle, keys[i].class)?),
            )))
        })?;
        inv.alt.insert(
            f,
            AltFingerprints {
                by_handle: found.into_iter().collect(),
                zero_pads: first.zero_pads(),
            },
        );
    }
    Ok(())
}

/// Whether `k`'s fingerprint is a digest of its wrap (so differs by format): a secret
/// key's, and a private key's that has no public half to be fingerprinted by.
fn wrap_digested(k: &KeyObject, inv: &Inventory) -> bool {
    if !matches!(k.fingerprint, Fingerprint::Known(_)) {
        return false;
    }
    match (k.class, k.key_type) {
        (KeyClass::SecretKey, _) => true,
        (KeyClass::PublicKey, _) => false,
        (KeyClass::PrivateKey, KeyType::Rsa) => k.public().modulus.is_empty(),
        (KeyClass::PrivateKey, t) if is_curve(t) => {
            let public = crate::domain::key::Identity::Id(KeyClass::PublicKey, k.id.to_vec());
            k.id.is_empty() || !inv.by_identity(&public).iter().any(|p| p.key_type == t)
        }
        (KeyClass::PrivateKey, _) => true,
    }
}

/// A key store whose sessions wrap in one wire format (a pair's that is not the run's).
struct InFormat<'a, S> {
    store: &'a S,
    format: crate::domain::wire::WireFormat,
}

impl<S: KeyStore> KeyStore for InFormat<'_, S> {
    type Session = S::Session;

    fn open_session(&self, cluster: &str) -> Result<Self::Session, HsmError> {
        self.store.open_session_in(cluster, Some(self.format))
    }

    fn listed_len(&self, _cluster: &str) -> Option<usize> {
        None
    }

    fn take_listed_keys(&self, _cluster: &str) -> Option<Vec<crate::domain::handle::Handle>> {
        None
    }
}

/// Fingerprints the keys of `inv` at `which`, with up to `workers` sessions.
fn fingerprint_some<S: KeyStore>(
    tokens: &S,
    inv: &mut Inventory,
    which: &[usize],
    workers: usize,
) -> Result<(), HsmError> {
    if which.is_empty() {
        return Ok(());
    }
    let keys = &inv.keys;
    let first = tokens.open_session(&inv.cluster)?;
    let found = in_chunks(tokens, &inv.cluster, &first, which, workers, |s, &k| {
        Ok(Some((k, s.fingerprint(&keys[k])?)))
    })?;
    for (i, fp) in found {
        // Nothing else holds these keys yet: the diff comes after.
        Arc::make_mut(&mut inv.keys[i]).fingerprint = Fingerprint::tried(fp);
    }
    Ok(())
}

/// Keys a worker takes at a time: large enough that the shared counter costs nothing,
/// small enough that the workers finish together.
const CHUNK: usize = 32;

/// Runs `each` on every item with up to `workers` sessions of `token` (`first` and new
/// ones), [`CHUNK`] items at a time, and collects what it returns (in no fixed order).
pub(crate) fn in_chunks<S: KeyStore, I: Sync, T: Send>(
    store: &S,
    cluster: &str,
    first: &S::Session,
    items: &[I],
    workers: usize,
    each: impl Fn(&S::Session, &I) -> Result<Option<T>, HsmError> + Sync,
) -> Result<Vec<T>, HsmError> {
    let next = AtomicUsize::new(0);
    let sessions = workers.min(items.len().div_ceil(CHUNK)).max(1);
    let work = |s: &S::Session| -> Result<Vec<T>, HsmError> {
        // Each worker's share, give or take a chunk: sized once rather than doubled as it
        // grows (at 100,000 keys the doubling was tens of megabytes of peak RSS).
        let mut out = Vec::with_capacity(items.len() / sessions + CHUNK);
        loop {
            let i = next.fetch_add(CHUNK, Ordering::Relaxed);
            let Some(chunk) = items.get(i..(i + CHUNK).min(items.len())) else {
                break;
            };
            if chunk.is_empty() {
                break;
            }
            for item in chunk {
                out.extend(each(s, item)?);
            }
        }
        Ok(out)
    };
    std::thread::scope(|scope| {
        let helpers: Vec<_> = (1..sessions)
            .map(|_| scope.spawn(|| work(&store.open_session(cluster)?)))
            .collect();
        let mut all = work(first)?;
        let mut rest = Vec::new();
        for h in helpers {
            rest.push(h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))?);
        }
        all.reserve_exact(rest.iter().map(Vec::len).sum());
        for mut r in rest {
            all.append(&mut r);
        }
        Ok(all)
    })
}

/// One token's inventory, read by up to `workers` sessions; secret and private keys are
/// fingerprinted if `fingerprint` (public keys always: theirs needs no call). Only a
/// token some sync `written` to has an in-flight journal to read.
fn read_one<S: KeyStore>(
    tokens: &S,
    name: &str,
    workers: usize,
    fingerprint: bool,
    written: bool,
    cached: Option<&HashMap<String, String>>,
) -> Result<Inventory, HsmError> {
    let first = tokens.open_session(name)?;
    let handles = first.key_handles_or(tokens.take_listed_keys(name))?;
    // With a cache (a token with CKA_UNIQUE_ID, issue 15): a key whose unique id is cached
    // is not wrapped again (an object's material never changes); the others are, and
    // what they give is learned.
    let cached = cached.filter(|_| fingerprint && tokens.has_unique_ids(name));
    let learned = std::sync::Mutex::new(Vec::new());
    let mut keys = in_chunks(tokens, name, &first, &handles, workers, |s, &h| {
        let Some(cache) = cached else {
            let Some(mut k) = s.read_fingerprinted(h, false)? else {
                return Ok(None);
            };
            // An EC private key's fingerprint is its public half's, found after the
            // read among this inventory's keys (a search per key was quadratic on SoftHSM).
            if fingerprint && k.class != KeyClass::PublicKey && !is_ec_private(&k) {
                k.fingerprint = Fingerprint::tried(s.fingerprint(&k)?);
            }
            return Ok(Some(Arc::new(k)));
        };
        // The key and its unique id in one read; a public key's fingerprint is its
        // attributes', a cached one is the cache's, the rest cost a wrap and are learned.
        let Some((mut k, uid)) = s.read_with_unique_id(h)? else {
            return Ok(None);
        };
        let cached_fp = uid.as_ref().and_then(|u| cache.get(u));
        match (k.class, cached_fp) {
            (KeyClass::PublicKey, _) | (_, None) => k.fingerprint = Fingerprint::tried(s.fingerprint(&k)?),
            (_, Some(fp)) => k.fingerprint = Fingerprint::Known(fp.as_str().into()),
        }
        if let (Some(u), None, false) = (uid, cached_fp, k.class == KeyClass::PublicKey) {
            if let Some(fp) = k.fingerprint.known() {
                if let Ok(mut l) = learned.lock() {
                    l.push((u, fp.to_string()));
                }
            }
        }
        Ok(Some(Arc::new(k)))
    })?;
    if fingerprint && cached.is_none() {
        pair_ec_halves(&first, &mut keys)?;
    }
    sort_keys(&mut keys);
    Ok(Inventory {
        cluster: name.to_string(),
        keys,
        // A search over every object on SoftHSM (~15 ms per 1,000): not on a token no
        // run copies to.
        in_flight: match written {
            true => first.journal_read()?.into_iter().collect::<HashSet<_>>(),
            false => HashSet::new(),
        },
        wire: first.wire_format(),
        zero_pads: first.zero_pads(),
        missing_types: tokens.missing_key_types(name),
        learned: learned.into_inner().unwrap_or_default(),
        peer_wire: Default::default(),
        alt: Default::default(),
    })
}

fn is_ec_private(k: &KeyObject) -> bool {
    k.class == KeyClass::PrivateKey && is_curve(k.key_type)
}

/// The key types whose public half carries `CKA_EC_POINT`.
fn is_curve(t: KeyType) -> bool {
    matches!(t, KeyType::Ec | KeyType::EcEdwards)
}

/// Fingerprints the EC private keys the read left deferred: from the EC point of the one
/// public key with the same `CKA_ID` in `keys` (what `find_like` would find, without a
/// search per key), else as the session fingerprints them on its own.
fn pair_ec_halves<S: KeySession>(s: &S, keys: &mut [Arc<KeyObject>]) -> Result<(), HsmError> {
    let mut points: HashMap<(KeyType, &[u8]), Option<&KeyObject>> = HashMap::new();
    for k in keys.iter() {
        if k.class == KeyClass::PublicKey && is_curve(k.key_type) && !k.id.is_empty() {
            points
                .entry((k.key_type, k.id.as_slice()))
                .and_modify(|e| *e = None)
                .or_insert(Some(k.as_ref()));
        }
    }
    let found: Vec<(usize, Option<String>)> = keys
        .iter()
        .enumerate()
        .filter(|(_, k)| is_ec_private(k) && k.fingerprint == Fingerprint::Deferred)
        .map(|(i, k)| {
            let fp = match points.get(&(k.key_type, k.id.as_slice())) {
                Some(Some(public)) if !k.id.is_empty() && !public.public().ec_point.is_empty() => {
                    Some(crate::hsm::public_fingerprint(k.key_type, public.public()))
                }
                _ => None,
            };
            (i, fp)
        })
        .collect();
    for (i, fp) in found {
        let k = Arc::make_mut(&mut keys[i]);
        k.fingerprint = match fp {
            Some(fp) => Fingerprint::Known(fp.into()),
            None => Fingerprint::tried(s.fingerprint(k)?),
        };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::handle::Handle;
    use crate::domain::key::{Identity, KeyClass, KeyFlags, KeyObject, KeyType};

    fn key(handle: u64, class: KeyClass, id: &[u8], label: &str) -> KeyObject {
        KeyObject {
            handle: Handle::fixture(handle),
            class,
            key_type: KeyType::Aes,
            id: id.into(),
            label: label.into(),
            flags: KeyFlags::default(),
            value_len: None,
            public_parts: None,
            fingerprint: crate::domain::fingerprint::Fingerprint::Deferred,
        }
    }

    /// The allocation-free comparisons agree with `Identity`'s order, so the binary
    /// search finds exactly what a scan finds.
    #[test]
    fn by_identity_matches_a_scan() {
        let mut keys = Vec::new();
        let mut h = 0;
        for class in [KeyClass::SecretKey, KeyClass::PrivateKey, KeyClass::PublicKey] {
            for id in [&b""[..], b"\x01", b"\x01\x00", b"\x02", b"\x01"] {
                for label in ["", "a", "b", "a"] {
                    h += 1;
                    keys.push(key(h, class, id, label));
                }
            }
        }
        keys.reverse();
        for a in &keys {
            for b in &keys {
                assert_eq!(a.cmp_by_identity(b), a.identity().cmp(&b.identity()));
                assert_eq!(a.cmp_identity(&b.identity()), a.identity().cmp(&b.identity()));
            }
        }
        let mut sorted = keys.clone();
        sort_keys(&mut sorted);
        let inv = Inventory {
            cluster: "c".into(),
            keys: sorted.into_iter().map(std::sync::Arc::new).collect(),
            in_flight: Default::default(),
            wire: None,
            zero_pads: false,
            missing_types: Vec::new(),
            learned: Vec::new(),
            peer_wire: Default::default(),
            alt: Default::default(),
        };
        for k in &keys {
            let id = k.identity();
            let mut scan: Vec<Handle> = keys.iter().filter(|x| x.identity() == id).map(|x| x.handle).collect();
            scan.sort();
            let found: Vec<Handle> = inv.by_identity(&id).iter().map(|x| x.handle).collect();
            assert_eq!(found, scan);
        }
        assert!(inv.by_identity(&Identity::Id(KeyClass::SecretKey, vec![9])).is_empty());
    }

    /// The key store port in use: the inventory on the in-memory store (issue 13).
    mod on_the_port {
        use super::*;
        use crate::hsm::memory::MemoryStore;

        fn aes(id: u8, extractable: bool) -> KeyObject {
            let mut k = key(0, KeyClass::SecretKey, &[id], &format!("k{id}"));
            k.flags.extractable = extractable;
            k.flags.private = true;
            k
        }

        /// A source with three keys (one never extractable) and a target holding key 1.
        fn store() -> MemoryStore {
            let s = MemoryStore::default();
            s.add("src", aes(1, true), b"one-one-one-one-one-one-one-one!");
            s.add("src", aes(2, true), b"two-two-two-two-two-two-two-two!");
            s.add("src", aes(3, false), b"three-three-three-three-three-33");
            s.add("dst", aes(1, true), b"one-one-one-one-one-one-one-one!");
            s
        }

        fn fingerprint_of(inv: &Inventories, cluster: &str, id: u8) -> Fingerprint {
            inv[cluster]
                .keys
                .iter()
                .find(|k| k.id.as_slice() == [id])
                .map(|k| k.fingerprint.clone())
                .unwrap_or_else(|| panic!("no key {id} on {cluster}"))
        }

        #[test]
        fn a_first_sync_wraps_only_what_a_target_already_holds() {
            let s = store();
            let inv = read_all(
                &s,
                &["src", "dst"],
                &["src"],
                Fingerprints::Compared,
                2,
                true,
                &FingerprintCache::new(),
            )
            .unwrap();
            let held = fingerprint_of(&inv, "src", 1);
            assert!(held.known().is_some(), "key 1 is compared with the target's copy");
            assert_eq!(held, fingerprint_of(&inv, "dst", 1), "equal keys, equal fingerprints");
            assert_eq!(
                fingerprint_of(&inv, "src", 2),
                Fingerprint::Deferred,
                "its copy job wraps it"
            );
            assert_eq!(fingerprint_of(&inv, "src", 3), Fingerprint::Deferred);
            assert_eq!(s.calls("src", "fingerprint"), 1, "one wrap on the source, not three");
        }

        #[test]
        fn a_plan_fingerprints_every_key_and_says_which_cannot_be_wrapped() {
            let s = store();
            let inv = read_all(
                &s,
                &["src", "dst"],
                &["src"],
                Fingerprints::All,
                2,
                true,
                &FingerprintCache::new(),
            )
            .unwrap();
            assert!(fingerprint_of(&inv, "src", 2).known().is_some());
            assert_eq!(fingerprint_of(&inv, "src", 3), Fingerprint::NotWrappable);
            assert_eq!(inv["src"].keys.len(), 3);
            assert!(
                inv["src"].keys.windows(2).all(|w| w[0].cmp_by_identity(&w[1]).is_le()),
                "sorted"
            );
        }

        #[test]
        fn a_token_error_fails_the_inventory() {
            let s = store();
            s.fail_next("dst", "list", crate::hsm::memory::Fault::Fatal);
            assert!(read_all(
                &s,
                &["src", "dst"],
                &["src"],
                Fingerprints::All,
                2,
                true,
                &FingerprintCache::new()
            )
            .is_err());
        }
    }
}
