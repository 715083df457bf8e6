//! hsm-sync's own records on a token: PKCS#11 data objects (`CKO_DATA`) with
//! `CKA_APPLICATION` = [`APPLICATION`], one implementation for every kind:
//!
//! - the in-flight journal ([`JOURNAL_LABEL`]), on each target while a run copies keys
//!   there, so the next run can repair what a killed run left half-made;
//! - the `token` state backend's pages, claims and fingerprint caches, named and read by
//!   [`crate::state::token`] (CONTRACT.md §6);
//! - the per-key state records of earlier versions ([`STATE_PREFIX`]), read until the
//!   state backend folds them into a page.
//!
//! Every label is `hsm-sync/<kind>…`: the application, a slash, the kind of record. These
//! labels and values are persisted (habit 17): runs of every version read what earlier
//! ones wrote, so they change only with a migration.
//!
//! They are token objects (a fresh CI runner sees them) and private (only a logged-in user
//! reads them). Each holds a name (its label) and a value (text written by the caller;
//! never key material). Inventory lists key classes only, so these objects never show up
//! as keys.
//!
//! An object is made and destroyed, never changed: PKCS#11 only promises that `CKA_LABEL`
//! can be changed, and SoftHSM refuses to change a data object's value. Records of earlier
//! versions that SoftHSM kept in the label (after the name and a space) still read
//! ([`DataObject::record`]).

use cryptoki::error::{Error as CkError, RvError};
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};

use crate::domain::handle::Handle;

use super::{raw, trace, DataRecord, HsmError, TokenSession};

/// The buffer a record's label or value is read into in one call (larger ones take
/// cryptoki's two).
const RECORD_BUF: usize = 2048;

/// `CKA_APPLICATION` of every data object hsm-sync writes, and the first part of each
/// one's label.
pub const APPLICATION: &str = "hsm-sync";

/// `CKA_LABEL` of the in-flight journal (see [`TokenSession::journal_write`]).
pub(super) const JOURNAL_LABEL: &str = "hsm-sync/in-flight";

/// The start of the per-key state records earlier versions wrote:
/// `hsm-sync/state/<class>/<id>` (read by [`crate::state::token`], no longer written).
pub(crate) const STATE_PREFIX: &str = "hsm-sync/state/";

/// One hsm-sync data object read back from a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataObject {
    /// Its handle on the token (valid for this run).
    pub handle: Handle,
    /// `CKA_LABEL`.
    pub label: String,
    /// `CKA_VALUE`.
    pub value: Vec<u8>,
}

impl DataObject {
    /// Its name: the label up to the first space.
    pub fn name(&self) -> &str {
        self.label.split(' ').next().unwrap_or_default()
    }

    /// Its record: what follows the name in the label where the token keeps it there,
    /// else `CKA_VALUE`.
    pub fn record(&self) -> &[u8] {
        match self.label.split_once(' ') {
            Some((_, rest)) => rest.as_bytes(),
            None => &self.value,
        }
    }
}

/// The in-flight journal.
impl TokenSession {
    /// Records, before any copy is made, which identities this run is about to create on
    /// this token. A process killed inside `C_UnwrapKey` can leave a copy whose value
    /// was never stored (SoftHSM writes an object in steps); the journal lets the next run
    /// tell such a copy from someone else's key, and repair only its own. One data object
    /// named [`JOURNAL_LABEL`], one identity a line, replaced each run, removed when a run
    /// ends.
    pub fn journal_write(&self, entries: &[String]) -> Result<(), HsmError> {
        self.journal_clear()?;
        self.create_object(JOURNAL_LABEL, entries.join("\n").as_bytes(), DataRecord::Journal)?;
        Ok(())
    }

    /// The identities an interrupted run was creating here (empty when none was).
    pub fn journal_read(&self) -> Result<Vec<String>, HsmError> {
        let mut out = Vec::new();
        for h in self.handles_named(Some(JOURNAL_LABEL), "finding the in-flight journal")? {
            if let Some(d) = self.reread_data(h)? {
                out.extend(String::from_utf8_lossy(d.record()).lines().map(String::from));
            }
        }
        Ok(out)
    }

    /// Removes the journal: the run ended and every copy it made was verified or destroyed.
    pub fn journal_clear(&self) -> Result<(), HsmError> {
        for h in self.handles_named(Some(JOURNAL_LABEL), "finding the in-flight journal")? {
            self.destroy_object(h, "removing the in-flight journal")?;
        }
        Ok(())
    }
}

/// Records by name: made, found, read and destroyed (the state backend's objects).
impl TokenSession {
    /// Creates a private token data object of hsm-sync with this label and value.
    pub fn create_data(&self, label: &str, value: &[u8]) -> Result<Handle, HsmError> {
        self.create_object(label, value, DataRecord::State)
    }

    /// The handles of every hsm-sync data object (one search; read them with
    /// [`Self::reread_data`], perhaps from several sessions).
    pub fn data_handles(&self) -> Result<Vec<Handle>, HsmError> {
        self.handles_named(None, "finding hsm-sync data objects")
    }

    /// Creates a data object named `name` (no spaces) holding `record`.
    pub fn create_record(&self, name: &str, record: &[u8]) -> Result<DataObject, HsmError> {
        let handle = self.create_data(name, record)?;
        Ok(DataObject {
            handle,
            label: name.into(),
            value: record.to_vec(),
        })
    }

    /// hsm-sync's data objects labelled exactly `label`, read (those that vanish while
    /// being read are left out).
    pub fn find_named(&self, label: &str) -> Result<Vec<DataObject>, HsmError> {
        let mut out = Vec::new();
        for h in self.handles_named(Some(label), "finding hsm-sync data objects")? {
            out.extend(self.reread_data(h)?);
        }
        Ok(out)
    }

    /// Destroys one of hsm-sync's data objects; one already gone counts as destroyed.
    pub fn destroy_record(&self, d: &DataObject) -> Result<(), HsmError> {
        self.destroy_object(d.handle, "removing an hsm-sync data object")
    }

    /// Reads one data object again by handle (its attributes as the token holds them
    /// now, another process's changes included); `None` if it is gone.
    pub fn reread_data(&self, handle: Handle) -> Result<Option<DataObject>, HsmError> {
        self.read_data(raw::object(handle))
    }
}

/// The one way each of the above reaches the token.
impl TokenSession {
    /// Creates a private, modifiable token data object of hsm-sync. A token that refuses
    /// the object itself (not its room or its session) gets [`HsmError::NoDataObjects`]:
    /// this template is the same everywhere, so `CKR_ATTRIBUTE_VALUE_INVALID` or
    /// `CKR_TEMPLATE_INCONSISTENT` on it means the token holds no such objects (NSS
    /// softokn rejects every token or private `CKO_DATA`; lib/softoken/pkcs11.c).
    fn create_object(&self, label: &str, value: &[u8], kind: DataRecord) -> Result<Handle, HsmError> {
        let h = trace::call("C_CreateObject", || {
            self.s.create_object(&[
                Attribute::Class(ObjectClass::DATA),
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Modifiable(true),
                Attribute::Application(APPLICATION.as_bytes().to_vec()),
                Attribute::Label(label.as_bytes().to_vec()),
                Attribute::Value(value.to_vec()),
            ])
        })
        .map_err(|error| match error {
            CkError::Pkcs11(RvError::AttributeValueInvalid | RvError::TemplateInconsistent, _) => {
                HsmError::NoDataObjects {
                    cluster: self.cluster.clone(),
                    token: self.token.clone(),
                    record: kind,
                    call: super::describe(&error),
                }
            }
            error => self.pk(kind.op())(error),
        })?;
        Ok(raw::handle(h))
    }

    /// The handles of hsm-sync's token data objects, those labelled `label` where given.
    fn handles_named(&self, label: Option<&str>, op: &'static str) -> Result<Vec<Handle>, HsmError> {
        let mut template = vec![
            Attribute::Class(ObjectClass::DATA),
            Attribute::Token(true),
            Attribute::Application(APPLICATION.as_bytes().to_vec()),
        ];
        if let Some(l) = label {
            template.push(Attribute::Label(l.as_bytes().to_vec()));
        }
        Ok(trace::call("C_FindObjects", || self.s.find_objects(&template))
            .map_err(self.pk(op))?
            .into_iter()
            .map(raw::handle)
            .collect())
    }

    /// Destroys a data object; one that is already gone counts as destroyed (another run
    /// removed it first).
    fn destroy_object(&self, handle: Handle, op: &'static str) -> Result<(), HsmError> {
        let h = raw::object(handle);
        match trace::call("C_DestroyObject", || self.s.destroy_object(h)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::ObjectHandleInvalid, _)) => Ok(()),
            Err(e) => Err(self.pk(op)(e)),
        }
    }

    fn read_data(&self, h: ObjectHandle) -> Result<Option<DataObject>, HsmError> {
        // One call with buffers sized for a record (a few hundred bytes) where it fits:
        // notify and compaction read every object hsm-sync keeps on a source, at 1 ms a call.
        let attrs = match self.read_raw(
            h,
            &[AttributeType::Label, AttributeType::Value],
            &[RECORD_BUF, RECORD_BUF],
            &[AttributeType::Label],
        ) {
            Some(Ok(r)) => r.attributes,
            Some(Err(CkError::Pkcs11(RvError::ObjectHandleInvalid, _))) => return Ok(None),
            _ => match self.read_data_sized(h)? {
                Some(a) => a,
                None => return Ok(None),
            },
        };
        let mut label = String::new();
        let mut value = Vec::new();
        for a in attrs {
            match a {
                Attribute::Label(l) => label = String::from_utf8_lossy(&l).into_owned(),
                Attribute::Value(v) => value = v,
                _ => {}
            }
        }
        Ok(Some(DataObject {
            handle: raw::handle(h),
            label,
            value,
        }))
    }

    /// [`Self::read_data`] through cryptoki, which asks for the sizes, then the values;
    /// `None` if the object is gone.
    fn read_data_sized(&self, h: ObjectHandle) -> Result<Option<Vec<Attribute>>, HsmError> {
        // Another process may change the label between the two calls (a notify claim),
        // which the token answers with CKR_BUFFER_TOO_SMALL: asking again reads the new one.
        let mut tries = 0;
        loop {
            tries += 1;
            match trace::call("C_GetAttributeValue", || {
                self.s.get_attributes(h, &[AttributeType::Label, AttributeType::Value])
            }) {
                Ok(a) => return Ok(Some(a)),
                Err(CkError::Pkcs11(RvError::ObjectHandleInvalid, _)) => return Ok(None),
                Err(CkError::Pkcs11(RvError::BufferTooSmall, _)) if tries < 10 => continue,
                Err(e) => return Err(self.pk("reading an hsm-sync data object")(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_is_in_the_label_when_the_token_keeps_it_there() {
        let mut d = DataObject {
            handle: Handle::fixture(1),
            label: "hsm-sync/state/secret-key/a1".into(),
            value: b"{\"v\":1}".to_vec(),
        };
        assert_eq!(d.name(), "hsm-sync/state/secret-key/a1");
        assert_eq!(d.record(), b"{\"v\":1}");
        d.label = "hsm-sync/state/secret-key/a1 {\"v\": 2}".into();
        assert_eq!(d.name(), "hsm-sync/state/secret-key/a1");
        assert_eq!(d.record(), b"{\"v\": 2}");
    }

    #[test]
    fn every_label_is_the_application_then_its_kind() {
        // Persisted: earlier runs' journals and records carry exactly these.
        assert_eq!(APPLICATION, "hsm-sync");
        assert_eq!(JOURNAL_LABEL, format!("{APPLICATION}/in-flight"));
        assert_eq!(STATE_PREFIX, format!("{APPLICATION}/state/"));
    }
}
