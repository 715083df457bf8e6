//! Stage 4: what each token holds. Inventories of different tokens are read side by side,
//! and each token's keys are read by several sessions at once: one search lists the
//! handles, then workers read and fingerprint them in chunks (on a network HSM every call
//! is a round trip, so a single reader would be the slowest part of a sync; issue 6).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::connect::Tokens;
use crate::hsm::ops::sort_keys;
use crate::hsm::{HsmError, TokenSession};
use crate::key::{Identity, KeyObject};

/// The keys of one cluster, with the lineage fingerprint of its domain key.
#[derive(Debug, Clone)]
pub struct Inventory {
    /// Cluster name.
    pub cluster: String,
    /// Key objects, domain key excluded, sorted by identity (shared with the diff).
    pub keys: Vec<Arc<KeyObject>>,
    /// Identities an interrupted run was creating here (its in-flight journal).
    pub in_flight: HashSet<String>,
}

impl Inventory {
    /// Keys with this identity (more than one is a duplicate: a conflict, never chosen).
    pub fn by_identity(&self, id: &Identity) -> Vec<&Arc<KeyObject>> {
        // `keys` is sorted by identity: a binary search, not a scan (a scan per key made
        // the diff quadratic: minutes at 100,000 keys; issue 6, linear cost).
        let from = self.keys.partition_point(|k| k.cmp_identity(id).is_lt());
        self.keys[from..]
            .iter()
            .take_while(|k| k.cmp_identity(id).is_eq())
            .collect()
    }
}

/// Inventories by cluster name.
pub type Inventories = HashMap<String, Inventory>;

/// Reads the inventories of `clusters`, side by side, each with up to `workers` sessions.
pub fn read_all(tokens: &Tokens, clusters: &[&str], workers: usize) -> Result<Inventories, HsmError> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = clusters
            .iter()
            .map(|name| scope.spawn(move || read_one(tokens, name, workers)))
            .collect();
        let mut out = HashMap::new();
        for h in handles {
            let inv = h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))?;
            out.insert(inv.cluster.clone(), inv);
        }
        Ok(out)
    })
}

/// Keys a worker takes at a time: large enough that the shared counter costs nothing,
/// small enough that the workers finish together.
const CHUNK: usize = 32;

/// One token's inventory, read by up to `workers` sessions.
fn read_one(tokens: &Tokens, name: &str, workers: usize) -> Result<Inventory, HsmError> {
    let token = tokens.get(name);
    let first = token.session()?;
    let handles = first.key_handles()?;
    let next = AtomicUsize::new(0);
    let sessions = workers.min(handles.len().div_ceil(CHUNK)).max(1);
    let work = |s: &TokenSession| -> Result<Vec<Arc<KeyObject>>, HsmError> {
        // Each worker's share, give or take a chunk: sized once rather than doubled as it
        // grows (at 100,000 keys the doubling was tens of megabytes of peak RSS).
        let mut out = Vec::with_capacity(handles.len() / sessions + CHUNK);
        loop {
            let i = next.fetch_add(CHUNK, Ordering::Relaxed);
            let Some(chunk) = handles.get(i..(i + CHUNK).min(handles.len())) else {
                break;
            };
            if chunk.is_empty() {
                break;
            }
            for &h in chunk {
                out.extend(s.read_fingerprinted(h)?.map(Arc::new));
            }
        }
        Ok(out)
    };
    let mut keys = std::thread::scope(|scope| -> Result<Vec<Arc<KeyObject>>, HsmError> {
        let helpers: Vec<_> = (1..sessions).map(|_| scope.spawn(|| work(&token.session()?))).collect();
        let mut keys = work(&first)?;
        let mut rest = Vec::new();
        for h in helpers {
            rest.push(h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))?);
        }
        keys.reserve_exact(rest.iter().map(Vec::len).sum());
        for mut r in rest {
            keys.append(&mut r);
        }
        Ok(keys)
    })?;
    sort_keys(&mut keys);
    Ok(Inventory {
        cluster: name.to_string(),
        keys,
        in_flight: first.journal_read()?.into_iter().collect::<HashSet<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::{KeyClass, KeyFlags, KeyType, PublicParts};

    fn key(handle: u64, class: KeyClass, id: &[u8], label: &str) -> KeyObject {
        KeyObject {
            handle,
            class,
            key_type: KeyType::Aes,
            id: id.to_vec(),
            label: label.into(),
            flags: KeyFlags::default(),
            value_len: None,
            public: PublicParts::default(),
            fingerprint: None,
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
        };
        for k in &keys {
            let id = k.identity();
            let mut scan: Vec<u64> = keys.iter().filter(|x| x.identity() == id).map(|x| x.handle).collect();
            scan.sort();
            let found: Vec<u64> = inv.by_identity(&id).iter().map(|x| x.handle).collect();
            assert_eq!(found, scan);
        }
        assert!(inv.by_identity(&Identity::Id(KeyClass::SecretKey, vec![9])).is_empty());
    }
}
