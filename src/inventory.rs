//! Stage 4: what each token holds. Inventories of different tokens are read side by side.

use std::collections::{HashMap, HashSet};

use crate::connect::Tokens;
use crate::hsm::HsmError;
use crate::key::{Identity, KeyObject};

/// The keys of one cluster, with the lineage fingerprint of its domain key.
#[derive(Debug, Clone)]
pub struct Inventory {
    /// Cluster name.
    pub cluster: String,
    /// Key objects, domain key excluded, sorted by identity.
    pub keys: Vec<KeyObject>,
    /// Identities an interrupted run was creating here (its in-flight journal).
    pub in_flight: HashSet<String>,
}

impl Inventory {
    /// Keys with this identity (more than one is a duplicate: a conflict, never chosen).
    pub fn by_identity(&self, id: &Identity) -> Vec<&KeyObject> {
        self.keys.iter().filter(|k| &k.identity() == id).collect()
    }
}

/// Inventories by cluster name.
pub type Inventories = HashMap<String, Inventory>;

/// Reads the inventories of `clusters`, one thread per token.
pub fn read_all(tokens: &Tokens, clusters: &[&str]) -> Result<Inventories, HsmError> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = clusters
            .iter()
            .map(|name| {
                scope.spawn(move || -> Result<Inventory, HsmError> {
                    let session = tokens.get(name).session()?;
                    Ok(Inventory {
                        cluster: name.to_string(),
                        keys: session.list_keys()?,
                        in_flight: session.journal_read()?.into_iter().collect(),
                    })
                })
            })
            .collect();
        let mut out = HashMap::new();
        for h in handles {
            let inv = h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))?;
            out.insert(inv.cluster.clone(), inv);
        }
        Ok(out)
    })
}
