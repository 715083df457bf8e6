//! `--shard i/n`: one of `n` deterministic parts of a diff, so several CI runners can
//! share one large sync. A `Shard` can only be built valid (`1 ≤ index ≤ count`), by its
//! constructor, its parser and its deserializer alike: a saved plan is untrusted input,
//! and `count: 0` once panicked with a division by zero after login (issue 13).

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::key::KeyRef;

/// One of `count` parts, `index` from 1. Keys are assigned by a hash of their `CKA_ID`
/// (the label when the id is empty), not by position: the same key lands in the same
/// shard on every runner, whatever else the tokens hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawShard")]
pub struct Shard {
    index: u32,
    count: u32,
}

/// A shard as written in a file, before its bounds are checked.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawShard {
    /// This shard, from 1.
    index: u32,
    /// How many shards (at least the index).
    count: u32,
}

/// Why a shard was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a shard: write i/n with 1 ≤ i ≤ n, e.g. 2/4")]
pub struct ShardError(String);

impl TryFrom<RawShard> for Shard {
    type Error = ShardError;

    fn try_from(r: RawShard) -> Result<Self, Self::Error> {
        Shard::new(r.index, r.count)
    }
}

impl Shard {
    /// Shard `index` of `count`; refuses `count: 0`, `index: 0` and `index > count`.
    pub fn new(index: u32, count: u32) -> Result<Shard, ShardError> {
        if index == 0 || count == 0 || index > count {
            return Err(ShardError(format!("{index}/{count}")));
        }
        Ok(Shard { index, count })
    }

    /// This shard, from 1.
    pub fn index(self) -> u32 {
        self.index
    }

    /// How many shards.
    pub fn count(self) -> u32 {
        self.count
    }

    /// Whether the key belongs to this shard.
    pub fn holds(self, key: &KeyRef) -> bool {
        // Version 1 of the assignment: SHA-256 of `id:HEX` (or `label:TEXT`), first 8
        // bytes big-endian, modulo the count. Changing it moves keys between runners.
        let mut h = Sha256::new();
        if key.id.is_empty() {
            h.update(b"label:");
            h.update(key.label.as_bytes());
        } else {
            h.update(b"id:");
            h.update(key.id.as_bytes());
        }
        let h = h.finalize();
        let n = u64::from_be_bytes([h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]]);
        // `new` guarantees count ≥ 1 and index ≥ 1.
        n % u64::from(self.count) == u64::from(self.index - 1)
    }
}

impl std::str::FromStr for Shard {
    type Err = ShardError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ShardError(s.to_string());
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let index = i.trim().parse().map_err(|_| bad())?;
        let count = n.trim().parse().map_err(|_| bad())?;
        Shard::new(index, count).map_err(|_| bad())
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_valid_shards_can_be_built() {
        assert!(Shard::new(1, 1).is_ok());
        assert!(Shard::new(3, 3).is_ok());
        for (i, n) in [(1, 0), (0, 0), (0, 2), (3, 2)] {
            assert!(Shard::new(i, n).is_err(), "{i}/{n}");
        }
        for s in ["1/0", "0/4", "5/4", "x/2", "2"] {
            assert!(s.parse::<Shard>().is_err(), "{s}");
        }
        assert_eq!("2/4".parse::<Shard>().map(|s| (s.index(), s.count())), Ok((2, 4)));
    }

    #[test]
    fn a_file_cannot_smuggle_in_a_zero_count() {
        for bad in [
            r#"{"index": 1, "count": 0}"#,
            r#"{"index": 0, "count": 3}"#,
            r#"{"index": 4, "count": 3}"#,
        ] {
            let e = serde_json::from_str::<Shard>(bad).unwrap_err();
            assert!(e.to_string().contains("not a shard"), "{bad}: {e}");
        }
        let ok: Shard = serde_json::from_str(r#"{"index": 2, "count": 3}"#).unwrap();
        assert_eq!(ok.to_string(), "2/3");
        assert_eq!(serde_json::to_string(&ok).unwrap(), r#"{"index":2,"count":3}"#);
    }

    #[test]
    fn every_key_is_in_exactly_one_shard() {
        for n in 1..=5u32 {
            for k in 0..50 {
                let key = KeyRef {
                    id: format!("{k:04x}"),
                    label: String::new(),
                    class: None,
                    key_type: None,
                    handle: None,
                };
                let hits = (1..=n).filter(|i| Shard::new(*i, n).unwrap().holds(&key)).count();
                assert_eq!(hits, 1);
            }
        }
    }
}
