//! Saved plans (`plan --out SAVED`, `apply SAVED`): the reviewed diff, the plan it came
//! from, and a digest of every token's inventory in scope. `apply SAVED` applies exactly
//! those actions, and refuses (exit 1) when any token in scope changed since, including
//! a target that was empty then. A saved plan holds no PIN (the plan only names where
//! PINs are) and no key material (fingerprints only).

use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::domain::inventory::Inventories;
use crate::domain::key::KeyObject;
use crate::domain::shard::Shard;
use crate::plan::Plan;
use crate::report::{JobRecord, Summary};

/// The `kind` that marks a file as a saved plan.
pub(crate) const KIND: &str = "hsm-sync/saved-plan";

/// The state of one token when the plan was made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TokenState {
    /// Cluster name.
    pub cluster: String,
    /// Token label.
    pub label: String,
    /// Token serial number.
    pub serial: String,
    /// Number of keys.
    pub keys: usize,
    /// SHA-256 over every key's identity, attributes and fingerprint (not handles).
    pub inventory_digest: String,
}

// The schema of a `Shard` as a file holds it (its deserializer refuses what this
// refuses): the domain type names no schema library. Its doc comment is the schema's
// description.
/// One of `count` parts, `index` from 1. Keys are assigned by a hash of their `CKA_ID`
/// (the label when the id is empty), not by position: the same key lands in the same
/// shard on every runner, whatever else the tokens hold.
#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Shard")]
#[allow(dead_code)]
struct ShardSchema {
    /// This shard, from 1.
    #[schemars(range(min = 1))]
    index: u32,
    /// How many shards (at least the index).
    #[schemars(range(min = 1))]
    count: u32,
}

/// A saved plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "hsm-sync saved plan")]
pub(crate) struct SavedPlan {
    /// Always `hsm-sync/saved-plan`.
    pub kind: String,
    /// Format version (1).
    pub version: u32,
    /// The plan file as given to `plan`.
    pub plan: String,
    /// The plan file's absolute path (relative PIN files resolve against it).
    pub plan_path: String,
    /// The plan's text: `apply SAVED` runs exactly this plan.
    pub plan_text: String,
    /// RFC 3339 UTC.
    pub created_at: String,
    /// The shard of the diff this plan holds (`plan --shard`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<ShardSchema>")]
    pub shard: Option<crate::domain::shard::Shard>,
    /// Every token in scope, as it was.
    pub tokens: Vec<TokenState>,
    /// Counts of the diff.
    pub summary: Summary,
    /// The diff, every job `pending`.
    pub jobs: Vec<JobRecord>,
}

/// Digest of one inventory: what a change to any key in scope changes. Version 2 is
/// written field by field (class and type codes, length-prefixed id and label, the flags'
/// bit mask, the value length, the fingerprint), never from `Debug`: a new field in
/// `KeyFlags` must change this encoding on purpose, not by accident (issue 13).
pub(crate) fn inventory_digest<'k>(keys: impl IntoIterator<Item = &'k KeyObject>) -> String {
    let mut h = Sha256::new();
    h.update(b"hsm-sync/inventory/v2\0");
    let field = |h: &mut Sha256, bytes: &[u8]| {
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(bytes);
    };
    for k in keys {
        h.update([k.class.code(), k.key_type.code()]);
        field(&mut h, &k.id);
        field(&mut h, k.label.as_bytes());
        h.update(k.flags.bits().to_be_bytes());
        match k.value_len {
            Some(n) => {
                h.update([1]);
                h.update(n.to_be_bytes());
            }
            None => h.update([0]),
        }
        field(&mut h, k.fingerprint.known().unwrap_or_default().as_bytes());
    }
    hex::encode(h.finalize())
}

/// The states of the tokens in scope. With a shard, only that shard's keys count: runners
/// applying the other shards meanwhile do not make this one stale.
pub(crate) fn token_states(
    plan: &Plan,
    inv: &Inventories,
    shard: Option<Shard>,
    facts: impl Fn(&str) -> (String, String),
) -> Vec<TokenState> {
    plan.clusters_in_scope()
        .iter()
        .filter_map(|c| {
            let i = inv.get(&c.name)?;
            let (label, serial) = facts(&c.name);
            let keys: Vec<&KeyObject> = i
                .keys
                .iter()
                .filter(|k| shard.is_none_or(|s| s.holds(&k.key_ref())))
                .map(|k| &**k)
                .collect();
            Some(TokenState {
                cluster: c.name.clone(),
                label,
                serial,
                keys: keys.len(),
                inventory_digest: inventory_digest(keys.iter().copied()),
            })
        })
        .collect()
}

/// What changed between the saved token states and now; empty when nothing did.
pub(crate) fn changes(saved: &[TokenState], now: &[TokenState]) -> Vec<String> {
    let mut out = Vec::new();
    for s in saved {
        match now.iter().find(|n| n.cluster == s.cluster) {
            None => out.push(format!("cluster `{}` is no longer in the plan's scope", s.cluster)),
            Some(n) if n.serial != s.serial || n.label != s.label => out.push(format!(
                "cluster `{}` is now token `{}` (serial {}), was `{}` (serial {})",
                s.cluster, n.label, n.serial, s.label, s.serial
            )),
            Some(n) if n.inventory_digest != s.inventory_digest => out.push(format!(
                "the keys on `{}` changed ({} key(s) then, {} now)",
                s.cluster, s.keys, n.keys
            )),
            Some(_) => {}
        }
    }
    for n in now {
        if !saved.iter().any(|s| s.cluster == n.cluster) {
            out.push(format!("cluster `{}` was not in the saved plan's scope", n.cluster));
        }
    }
    out
}

/// Saved plans larger than this are refused unread (one of 100,000 keys is about 60 MB).
pub(crate) const MAX_SAVED_BYTES: u64 = 256 * 1024 * 1024;

/// Reads `path` as a saved plan, if it is one (`Ok(None)` for a YAML plan). A file that
/// does not start with `{` is left unread for the plan loader and its own size limit;
/// a JSON one is read up to [`MAX_SAVED_BYTES`], so no input costs unbounded memory.
pub(crate) fn read(path: &Path) -> std::io::Result<Option<SavedPlan>> {
    use std::io::{BufRead, Read};
    let mut f = std::io::BufReader::new(std::fs::File::open(path)?);
    let starts_json = f
        .fill_buf()?
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'{');
    if !starts_json {
        return Ok(None);
    }
    let mut text = Vec::new();
    f.take(MAX_SAVED_BYTES + 1).read_to_end(&mut text)?;
    if text.len() as u64 > MAX_SAVED_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {MAX_SAVED_BYTES} bytes"),
        ));
    }
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(&text) else {
        return Ok(None);
    };
    if value.get("kind").and_then(|k| k.as_str()) != Some(KIND) {
        // A report handed to apply: say so, rather than list its fields as plan errors.
        if value.get("jobs").is_some() && value.get("summary").is_some() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "it is an hsm-sync report, not a plan or a saved plan",
            ));
        }
        return Ok(None);
    }
    serde_json::from_value(value)
        .map(Some)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// The absolute path of a plan file, for [`SavedPlan::plan_path`].
pub(crate) fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Jobs compared as actions: the same keys, targets, actions and reasons (not handles,
/// which a token may number differently in another process).
pub(crate) fn same_jobs(a: &[JobRecord], b: &[JobRecord]) -> bool {
    let key = |j: &JobRecord| {
        (
            j.sync.clone(),
            j.source.clone(),
            j.target.clone(),
            j.key.id.clone(),
            j.key.label.clone(),
            j.key.class,
            j.action,
            j.reason,
        )
    };
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| key(x) == key(y))
}

/// The JSON Schema of a saved plan (`schemas/saved-plan.schema.json`).
pub(crate) fn schema() -> schemars::Schema {
    schemars::schema_for!(SavedPlan)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shard_schema_is_the_shape_a_shard_serializes_to() {
        let json = serde_json::to_value(Shard::new(2, 3).unwrap()).unwrap();
        let mut fields: Vec<&String> = json.as_object().unwrap().keys().collect();
        let schema = serde_json::to_value(schemars::schema_for!(ShardSchema)).unwrap();
        let mut props: Vec<&String> = schema["properties"].as_object().unwrap().keys().collect();
        fields.sort();
        props.sort();
        assert_eq!(fields, props);
        for p in props {
            assert_eq!(schema["properties"][p]["minimum"], 1, "{p}");
        }
        assert_eq!(schema["required"], serde_json::json!(["index", "count"]));
    }

    fn state(cluster: &str, keys: usize, digest: &str) -> TokenState {
        TokenState {
            cluster: cluster.into(),
            label: cluster.into(),
            serial: "1".into(),
            keys,
            inventory_digest: digest.into(),
        }
    }

    #[test]
    fn an_empty_target_that_gained_keys_is_a_change() {
        let empty = inventory_digest(&[]);
        let saved = vec![state("a", 3, "x"), state("b", 0, &empty)];
        assert!(changes(&saved, &saved).is_empty());
        let now = vec![state("a", 3, "x"), state("b", 1, "y")];
        assert_eq!(
            changes(&saved, &now),
            vec!["the keys on `b` changed (0 key(s) then, 1 now)".to_string()]
        );
    }

    #[test]
    fn only_json_is_read_as_a_saved_plan() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        assert!(read(&file("a.yaml", "version: 1\nclusters: {}\n")).unwrap().is_none());
        assert!(
            read(&file("b.json", "  {\"version\": 1}")).unwrap().is_none(),
            "a plan written as JSON"
        );
        let bad = read(&file(
            "c.json",
            "{\"kind\": \"hsm-sync/saved-plan\", \"version\": \"one\"}",
        ));
        assert_eq!(bad.unwrap_err().kind(), std::io::ErrorKind::InvalidData);
    }
}
