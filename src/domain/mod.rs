//! The domain core: what hsm-sync knows about keys, their kinds, fingerprints, reasons,
//! shards and lifecycle events, in types that name no library but std, serde and sha2.
//! Every persisted form built here (digests, journal keys, state labels) is an explicit,
//! versioned encoding, never `Debug` or enum declaration order (issue 13).

pub mod event;
pub mod fingerprint;
pub mod handle;
pub mod inventory;
pub mod key;
pub mod kind;
pub mod outcome;
pub mod reason;
pub mod shard;
pub mod token;
pub mod wire;
