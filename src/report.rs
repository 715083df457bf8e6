//! The machine-readable report (CONTRACT.md §4): `apply --report FILE` and
//! `plan --format json` share this shape. It carries no PIN and no key material, and is
//! written atomically (complete or absent).

use std::io::Write;
use std::path::Path;
use std::time::SystemTime;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::diff::{Action, Diff, DiffItem, Warning};
use crate::domain::event::Event;
use crate::domain::handle::Handle;
use crate::domain::key::{KeyClass, KeyRef, KeyType};
pub use crate::domain::outcome::{Outcome, Status};
use crate::domain::reason::Reason;
use crate::domain::wire::WireFormat;

/// Counts per action, plus failed jobs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct Summary {
    pub create: usize,
    pub update: usize,
    pub delete: usize,
    pub unchanged: usize,
    pub conflict: usize,
    pub blocked: usize,
    pub failed: usize,
}

/// One job: one key on one target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobRecord {
    /// Sync entry.
    pub sync: String,
    /// Source cluster.
    pub source: String,
    /// Target cluster.
    pub target: String,
    /// The key.
    #[schemars(with = "KeyRefSchema")]
    pub key: KeyRef,
    /// The diff's decision.
    pub action: Action,
    /// What happened.
    #[schemars(with = "Values<Status>")]
    pub status: Status,
    /// Why it was blocked, in conflict or updated: a bare code (CONTRACT.md §3).
    #[schemars(with = "Option<Values<Reason>>")]
    pub reason: Option<Reason>,
    /// Every reason that applies, the first being `reason`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(with = "Vec<Values<Reason>>")]
    pub reasons: Vec<Reason>,
    /// The explanation of the reasons (or of what drifted), for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
    /// Wall time of the job.
    pub duration_ms: u64,
    /// Fingerprint of the key material (never the material).
    pub fingerprint: Option<String>,
    /// Anything the operator should know about a job that succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Attempts made, when transient errors were retried (absent when 1 or none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    /// The wire format the key moves in, for jobs that move one (`rfc5649`, `rfc3394`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<Values<WireFormat>>")]
    pub mechanism: Option<WireFormat>,
}

/// How one delivery to an associated resource ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum DeliveryStatus {
    /// The resource answered 2xx.
    #[serde(rename = "sent")]
    Sent,
    /// Every attempt failed, or nothing could be sent.
    #[serde(rename = "failed")]
    Failed,
}

/// The schema of a lifecycle event's name, from the one list of events (the domain type
/// names no schema library).
fn event_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let names: Vec<&str> = Event::ALL.iter().map(|e| e.name()).collect();
    schemars::json_schema!({ "type": "string", "enum": names })
}

/// A domain enum as the schemas describe it. The domain names no schema library
/// (issue 13), so its schema is built here, from the enum's own list of values and its
/// own serialization: a new key type or reason never needs a schema edit.
pub(crate) trait SchemaEnum: Serialize + Sized + 'static {
    /// The name of its `$defs` entry.
    const NAME: &'static str;
    /// Its description in the schema.
    const DESCRIPTION: &'static str;
    /// Every value.
    fn all() -> &'static [Self];
}

impl SchemaEnum for KeyClass {
    const NAME: &'static str = "KeyClass";
    const DESCRIPTION: &'static str = "PKCS#11 object class of a key.";
    fn all() -> &'static [Self] {
        &KeyClass::ALL
    }
}

impl SchemaEnum for KeyType {
    const NAME: &'static str = "KeyType";
    const DESCRIPTION: &'static str = "Key type, as far as hsm-sync distinguishes them.";
    fn all() -> &'static [Self] {
        &KeyType::ALL
    }
}

impl SchemaEnum for Reason {
    const NAME: &'static str = "Reason";
    const DESCRIPTION: &'static str = "A reason code. Serialized as its kebab-case code and nothing else.";
    fn all() -> &'static [Self] {
        &Reason::ALL
    }
}

impl SchemaEnum for WireFormat {
    const NAME: &'static str = "WireFormat";
    const DESCRIPTION: &'static str = "The wire format of a wrapped key between a source and a target.";
    fn all() -> &'static [Self] {
        &WireFormat::ALL
    }
}

impl SchemaEnum for Status {
    const NAME: &'static str = "Status";
    const DESCRIPTION: &'static str = "The outcome of one job.";
    fn all() -> &'static [Self] {
        &Status::ALL
    }
}

/// The schema of the domain enum `T` (`#[schemars(with = "Values<T>")]`): a string, one
/// of the values `T` serializes to.
pub(crate) struct Values<T>(std::marker::PhantomData<T>);

impl<T: SchemaEnum> JsonSchema for Values<T> {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        T::NAME.into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let values: Vec<serde_json::Value> = T::all()
            .iter()
            // A unit variant always serializes; the unit test pins the list either way.
            .filter_map(|v| serde_json::to_value(v).ok())
            .collect();
        schemars::json_schema!({ "description": T::DESCRIPTION, "type": "string", "enum": values })
    }
}

// The schema of `KeyRef`, field for field (a unit test compares them): the domain type
// names no schema library. Its doc comment is the schema's description.
/// A key as the report and diff name it.
#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "KeyRef")]
#[allow(dead_code)]
pub(crate) struct KeyRefSchema {
    /// `CKA_ID` in hex (empty when the key has none).
    id: String,
    /// `CKA_LABEL`.
    label: String,
    /// Object class (absent when the key was not found).
    #[schemars(with = "Option<Values<KeyClass>>")]
    class: Option<KeyClass>,
    /// Key type (absent when the key was not found).
    #[schemars(with = "Option<Values<KeyType>>")]
    key_type: Option<KeyType>,
    /// Object handle on the source, where the key exists there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    // On the wire a handle is its bare number.
    #[schemars(with = "Option<u64>")]
    handle: Option<Handle>,
}

/// One delivery to an associated resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NotificationRecord {
    /// Sync entry.
    pub sync: String,
    /// Resource name.
    pub resource: String,
    /// Key id (hex).
    pub key_id: String,
    /// `synced` or `deleted`.
    #[schemars(schema_with = "event_schema")]
    pub event: Event,
    /// `sent` or `failed`.
    pub status: DeliveryStatus,
    /// The HTTP status, if one came back.
    pub http_status: Option<u16>,
    /// Why it failed (never a token or secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Delivery attempts made (0 when nothing could be sent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
}

/// The report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "hsm-sync report")]
pub struct Report {
    /// Report format version (1).
    pub version: u32,
    /// `plan`, `apply` or `notify`.
    pub command: String,
    /// The plan file.
    pub plan: String,
    /// RFC 3339 UTC.
    pub started_at: String,
    /// RFC 3339 UTC.
    pub finished_at: String,
    /// Counts.
    pub summary: Summary,
    /// Every job's outcome.
    pub jobs: Vec<JobRecord>,
    /// Every notification's outcome.
    pub notifications: Vec<NotificationRecord>,
    /// What the operator must hear about beyond the jobs, e.g. `empty-selector`
    /// (CONTRACT.md §4); any of them makes `apply` exit 3.
    #[serde(default)]
    pub warnings: Vec<Warning>,
    /// True only for a run stopped by SIGINT/SIGTERM: jobs not started are `skipped`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub interrupted: bool,
    /// Where the run's wall time went (absent for `notify`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timings: Option<Timings>,
}

/// Where the wall time of a `plan` or `apply` went, in milliseconds: what an operator
/// sizing a maintenance window needs, and what the benchmark reads (issue 6).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Timings {
    /// Logging in to every token in scope and proving lineage.
    pub connect_ms: u64,
    /// Reading the inventories (side by side).
    pub inventory_ms: u64,
    /// Computing the diff.
    pub diff_ms: u64,
    /// Running the jobs (apply).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execute_ms: Option<u64>,
    /// Recording lifecycle events on the sources and notifying (apply).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify_ms: Option<u64>,
}

/// Whole milliseconds since `t`.
pub fn ms_since(t: std::time::Instant) -> u64 {
    t.elapsed().as_millis() as u64
}

/// RFC 3339 UTC, seconds precision.
pub fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

impl JobRecord {
    /// The record of one diff item and, after an apply, its outcome.
    pub fn of(it: &DiffItem, o: Option<&Outcome>) -> JobRecord {
        JobRecord {
            sync: it.sync.to_string(),
            source: it.source.to_string(),
            target: it.target.to_string(),
            key: it.key.clone(),
            action: it.action,
            status: o.map_or(Status::Pending, |o| o.status),
            reason: it.reason,
            reasons: it.reasons.clone(),
            detail: it.detail.clone(),
            error: o.and_then(|o| o.error.clone()),
            duration_ms: o.map_or(0, |o| o.duration_ms),
            fingerprint: o
                .and_then(|o| o.fingerprint.clone())
                .or_else(|| it.fingerprint().map(String::from)),
            note: o.and_then(|o| o.note.clone()),
            attempts: o.map(|o| o.attempts).filter(|n| *n > 1),
            mechanism: it.mechanism,
        }
    }

    /// The records of every diff item, in order.
    pub fn all(diff: &Diff, outcomes: Option<&[Outcome]>) -> Vec<JobRecord> {
        diff.items
            .iter()
            .enumerate()
            .map(|(i, it)| JobRecord::of(it, outcomes.and_then(|o| o.get(i))))
            .collect()
    }
}

impl Summary {
    /// The counts of a diff and, after an apply, its failed jobs.
    pub fn of(diff: &Diff, outcomes: Option<&[Outcome]>) -> Summary {
        let mut summary = Summary::default();
        for (i, it) in diff.items.iter().enumerate() {
            match it.action {
                Action::Create => summary.create += 1,
                Action::Update => summary.update += 1,
                Action::Delete => summary.delete += 1,
                Action::Unchanged => summary.unchanged += 1,
                Action::Conflict => summary.conflict += 1,
                Action::Blocked => summary.blocked += 1,
            }
            if outcomes
                .and_then(|o| o.get(i))
                .is_some_and(|o| o.status == Status::Failed)
            {
                summary.failed += 1;
            }
        }
        summary
    }
}

impl Report {
    /// Builds a report of a diff; `outcomes` is `None` for a plan (every job pending).
    pub fn new(command: &str, plan: &Path, started: SystemTime, diff: &Diff, outcomes: Option<&[Outcome]>) -> Report {
        let mut report = Report::header(command, plan, started, diff, outcomes);
        report.jobs = JobRecord::all(diff, outcomes);
        report
    }

    /// A report without its jobs (see [`PlanJson`]).
    pub fn header(
        command: &str,
        plan: &Path,
        started: SystemTime,
        diff: &Diff,
        outcomes: Option<&[Outcome]>,
    ) -> Report {
        Report {
            version: 1,
            command: command.into(),
            plan: plan.display().to_string(),
            started_at: timestamp(started),
            finished_at: timestamp(SystemTime::now()),
            summary: Summary::of(diff, outcomes),
            jobs: Vec::new(),
            notifications: Vec::new(),
            warnings: diff.notes.clone(),
            interrupted: false,
            timings: None,
        }
    }
}

/// A plan's report serialized straight from its diff: the JSON of [`Report`], field for
/// field, with each job's record made as it is written. At 100,000 jobs the records
/// held at once were a quarter of `plan`'s own peak RSS (issue 6).
pub struct PlanJson<'a> {
    /// The report, its `jobs` empty.
    pub header: &'a Report,
    /// The diff whose items are the jobs.
    pub diff: &'a Diff,
}

impl Serialize for PlanJson<'_> {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        struct Jobs<'a>(&'a Diff);
        impl Serialize for Jobs<'_> {
            fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
                ser.collect_seq(self.0.items.iter().map(|it| JobRecord::of(it, None)))
            }
        }
        let r = self.header;
        // Same fields, same order as the derived `Report` (a unit test compares them).
        let mut st = ser.serialize_struct("Report", 10)?;
        st.serialize_field("version", &r.version)?;
        st.serialize_field("command", &r.command)?;
        st.serialize_field("plan", &r.plan)?;
        st.serialize_field("started_at", &r.started_at)?;
        st.serialize_field("finished_at", &r.finished_at)?;
        st.serialize_field("summary", &r.summary)?;
        st.serialize_field("jobs", &Jobs(self.diff))?;
        st.serialize_field("notifications", &r.notifications)?;
        st.serialize_field("warnings", &r.warnings)?;
        if r.interrupted {
            st.serialize_field("interrupted", &true)?;
        }
        if let Some(t) = &r.timings {
            st.serialize_field("timings", t)?;
        }
        st.end()
    }
}

/// The JSON Schema of the report (`schemas/report.schema.json`).
pub fn schema() -> schemars::Schema {
    schemars::schema_for!(Report)
}

/// Writes `value` as pretty JSON to `path` atomically (see [`write_bytes_atomic`]),
/// serialized straight into the temporary file: at 100,000 jobs a report is tens of
/// megabytes, never held whole in memory (issue 6, peak RSS).
pub fn write_atomic<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    write_with_atomic(path, |w| {
        serde_json::to_writer_pretty(&mut *w, value)?;
        w.write_all(b"\n")
    })
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, synced,
/// then renamed over the destination, so a reader sees the whole file or none.
pub fn write_bytes_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_with_atomic(path, |w| w.write_all(bytes))
}

/// Atomic write (see [`write_bytes_atomic`]) of whatever `fill` writes.
fn write_with_atomic(
    path: &Path,
    fill: impl FnOnce(&mut std::io::BufWriter<&std::fs::File>) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let tmp = tempfile::NamedTempFile::new_in(dir)?;
    {
        let mut w = std::io::BufWriter::new(tmp.as_file());
        fill(&mut w)?;
        w.flush()?;
    }
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The values serde itself accepts for `T`: the variant list its derived
    /// `Deserialize` hands the deserializer, caught before any input is read.
    fn serde_variants<T: serde::de::DeserializeOwned>() -> Vec<&'static str> {
        use serde::de::{value::Error, Error as _, Visitor};
        struct Catch(Option<&'static [&'static str]>);
        impl<'de> serde::Deserializer<'de> for &mut Catch {
            type Error = Error;
            fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Error> {
                Err(Error::custom("not an enum"))
            }
            fn deserialize_enum<V: Visitor<'de>>(
                self,
                _: &'static str,
                variants: &'static [&'static str],
                _: V,
            ) -> Result<V::Value, Error> {
                self.0 = Some(variants);
                Err(Error::custom("caught"))
            }
            serde::forward_to_deserialize_any! {
                bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
                byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map
                struct identifier ignored_any
            }
        }
        let mut catch = Catch(None);
        let _ = T::deserialize(&mut catch);
        catch
            .0
            .expect("a derived enum deserializer names its variants")
            .to_vec()
    }

    /// The `enum` of `T`'s schema, checked against serde's own list of `T`'s values.
    fn check_enum<T: SchemaEnum + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug>() {
        let schema = serde_json::to_value(schemars::schema_for!(Values<T>)).unwrap();
        let listed: Vec<&str> = schema["enum"]
            .as_array()
            .unwrap_or_else(|| panic!("{}: {schema}", T::NAME))
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(
            listed,
            serde_variants::<T>(),
            "{}: `ALL` misses or adds a value",
            T::NAME
        );
        for (name, v) in listed.iter().zip(T::all()) {
            assert_eq!(&serde_json::from_value::<T>(serde_json::json!(name)).unwrap(), v);
        }
    }

    #[test]
    fn each_domain_enum_schema_lists_exactly_what_it_serializes_to() {
        check_enum::<KeyClass>();
        check_enum::<KeyType>();
        check_enum::<Reason>();
        check_enum::<Status>();
    }

    #[test]
    fn the_key_ref_schema_has_the_fields_of_a_key_ref() {
        let key = KeyRef {
            id: "a1".into(),
            label: "k".into(),
            class: Some(KeyClass::SecretKey),
            key_type: Some(KeyType::Aes),
            handle: Some(Handle::fixture(3)),
        };
        let json = serde_json::to_value(&key).unwrap();
        let mut fields: Vec<&String> = json.as_object().unwrap().keys().collect();
        let schema = serde_json::to_value(schemars::schema_for!(KeyRefSchema)).unwrap();
        let mut props: Vec<&String> = schema["properties"].as_object().unwrap().keys().collect();
        fields.sort();
        props.sort();
        assert_eq!(fields, props);
        // Only what a key not found lacks is optional.
        assert_eq!(schema["required"], serde_json::json!(["id", "label"]));
        let bare = serde_json::json!({"id": "", "label": "x", "class": null, "key_type": null});
        assert!(serde_json::from_value::<KeyRef>(bare).is_ok());
        assert!(serde_json::from_value::<KeyRef>(serde_json::json!({"id": "", "label": "x"})).is_ok());
    }

    #[test]
    fn a_plan_streamed_is_the_report_built() {
        let item = |label: &str, action| DiffItem {
            sync: "s".into(),
            source: "a".into(),
            target: "b".into(),
            key: KeyRef {
                id: "a1".into(),
                label: label.into(),
                class: None,
                key_type: None,
                handle: Some(Handle::fixture(3)),
            },
            action,
            reason: Some(Reason::Drifted),
            reasons: vec![Reason::Drifted],
            detail: Some("why".into()),
            source_key: Some(std::sync::Arc::new(crate::domain::key::KeyObject {
                handle: Handle::fixture(3),
                class: crate::domain::key::KeyClass::SecretKey,
                key_type: crate::domain::key::KeyType::Aes,
                id: smallvec::smallvec![0xa1],
                label: label.into(),
                flags: Default::default(),
                value_len: None,
                public_parts: None,
                fingerprint: crate::domain::fingerprint::Fingerprint::Known("f".into()),
            })),
            target_key: None,
            mechanism: None,
        };
        let diff = Diff {
            items: vec![item("x", Action::Create), item("y", Action::Conflict)],
            notes: Vec::new(),
        };
        let t = SystemTime::UNIX_EPOCH;
        let mut built = Report::new("plan", Path::new("p.yaml"), t, &diff, None);
        let mut header = Report::header("plan", Path::new("p.yaml"), t, &diff, None);
        for timings in [None, Some(Timings::default())] {
            built.timings = timings.clone();
            header.timings = timings;
            // `finished_at` is taken at build time: the same second in this test.
            header.finished_at = built.finished_at.clone();
            let streamed = serde_json::to_string_pretty(&PlanJson {
                header: &header,
                diff: &diff,
            })
            .unwrap();
            assert_eq!(streamed, serde_json::to_string_pretty(&built).unwrap());
        }
    }
}
