//! What one token holds, as data: the keys of a cluster sorted by identity, and the
//! identities an interrupted run was copying there. The reader is `inventory.rs` (it
//! names the token layer); the diff only needs this, so it never imports `hsm`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::fingerprint::Fingerprint;
use super::handle::Handle;
use super::key::{Identity, KeyObject};
use super::wire::WireFormat;

/// The keys of one cluster, with the lineage fingerprint of its domain key.
#[derive(Debug, Clone)]
pub struct Inventory {
    /// Cluster name.
    pub cluster: String,
    /// Key objects, domain key excluded, sorted by identity (shared with the diff).
    pub keys: Vec<Arc<KeyObject>>,
    /// Identities an interrupted run was creating here (its in-flight journal).
    pub in_flight: HashSet<String>,
    /// The wire format this cluster's pairs use (its fingerprints are in it); `None`
    /// where no token was read (unit tests).
    pub wire: Option<WireFormat>,
    /// Whether this cluster's mechanism zero-pads odd lengths before wrapping.
    pub zero_pads: bool,
    /// Key types this cluster's token offers no mechanism for (it cannot hold them).
    pub missing_types: Vec<super::key::KeyType>,
    /// Fingerprints computed this run of keys with a `CKA_UNIQUE_ID`, by that id: what the
    /// state backend's fingerprint cache learns (issue 15).
    pub learned: Vec<(String, String)>,
    /// The wire format of each of this cluster's pairs, by the other cluster's name
    /// (CONTRACT §1: one per pair); a pair not here is in [`Self::wire`].
    pub peer_wire: HashMap<String, WireFormat>,
    /// Fingerprints in the formats of this cluster's other pairs, where they differ from
    /// [`Self::wire`]'s (only keys whose fingerprint is a wrap digest have one).
    pub alt: HashMap<WireFormat, AltFingerprints>,
}

/// A cluster's keys fingerprinted in a second wire format, for the pairs that use it.
#[derive(Debug, Clone, Default)]
pub struct AltFingerprints {
    /// By key handle.
    pub by_handle: HashMap<Handle, Fingerprint>,
    /// Whether this format's mechanism here zero-pads odd lengths.
    pub zero_pads: bool,
}

impl Inventory {
    /// The wire format of this cluster's pair with `peer`.
    pub fn pair_format(&self, peer: &str) -> Option<WireFormat> {
        self.peer_wire.get(peer).copied().or(self.wire)
    }

    /// `k`'s fingerprint in `format` (one of this cluster's keys): its own where the
    /// format is this cluster's first, or the key's fingerprint is no wrap digest.
    pub fn fingerprint_in<'a>(&'a self, k: &'a KeyObject, format: Option<WireFormat>) -> &'a Fingerprint {
        match format.filter(|f| Some(*f) != self.wire) {
            Some(f) => self
                .alt
                .get(&f)
                .and_then(|a| a.by_handle.get(&k.handle))
                .unwrap_or(&k.fingerprint),
            None => &k.fingerprint,
        }
    }

    /// Whether this cluster's mechanism for `format` zero-pads odd lengths.
    pub fn zero_pads_in(&self, format: Option<WireFormat>) -> bool {
        match format.filter(|f| Some(*f) != self.wire) {
            Some(f) => self.alt.get(&f).is_some_and(|a| a.zero_pads),
            None => self.zero_pads,
        }
    }

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
