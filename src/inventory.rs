//! Stage 4: what each token holds. Inventories of different tokens are read side by side,
//! and each token's keys are read by several sessions at once: one search lists the
//! handles, then workers read and fingerprint them in chunks (on a network HSM every call
//! is a round trip, so a single reader would be the slowest part of a sync; issue 6).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::connect::Tokens;
use crate::hsm::ops::sort_keys;
use crate::hsm::{HsmError, TokenSession};
use crate::key::{Identity, KeyObject};

/// The keys of one cluster, with the lineage fingerprint of its domain key.
#[derive(Debug, Clone)]
pub struct Inventory {
    /// Cluster name.
    pub cluster: String,
    /// Key objects, domain key excluded, sorted by identity.
    pub keys: Vec<KeyObject>,
}

impl Inventory {
    /// Keys with this identity (more than one is a duplicate: a conflict, never chosen).
    pub fn by_identity(&self, id: &Identity) -> Vec<&KeyObject> {
        self.keys.iter().filter(|k| &k.identity() == id).collect()
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
    let work = |s: &TokenSession| -> Result<Vec<KeyObject>, HsmError> {
        let mut out = Vec::new();
        loop {
            let i = next.fetch_add(CHUNK, Ordering::Relaxed);
            let Some(chunk) = handles.get(i..(i + CHUNK).min(handles.len())) else {
                break;
            };
            if chunk.is_empty() {
                break;
            }
            for &h in chunk {
                out.extend(s.read_fingerprinted(h)?);
            }
        }
        Ok(out)
    };
    let extra = workers.min(handles.len().div_ceil(CHUNK)).saturating_sub(1);
    let mut keys = std::thread::scope(|scope| -> Result<Vec<KeyObject>, HsmError> {
        let helpers: Vec<_> = (0..extra).map(|_| scope.spawn(|| work(&token.session()?))).collect();
        let mut keys = work(&first)?;
        for h in helpers {
            keys.extend(h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))?);
        }
        Ok(keys)
    })?;
    sort_keys(&mut keys);
    Ok(Inventory {
        cluster: name.to_string(),
        keys,
    })
}
