//! The FFI edge: every `unsafe` block and every raw PKCS#11 call of the crate lives in
//! this file, so a reviewer audits one page. Calls go past cryptoki where its convenience
//! costs double (PKCS11-NOTES.md, issue 6): the module's function list is loaded beside
//! cryptoki's context; `C_GetAttributeValue` is made once with buffers
//! sized in advance (cryptoki asks for the sizes first); `C_WrapKey` is made once into a
//! buffer sized for the key's class (cryptoki calls it twice, and the token does the
//! whole wrap both times). Each returns `None` where cryptoki's own call must do instead.
//! And key types go raw both ways: cryptoki 0.12 gives `CKK_SHA224/384/512_HMAC` the value
//! of `CKK_SHA256_HMAC`, so the one-call read keeps the number the token gave, and copies
//! are made by raw `C_UnwrapKey` and `C_CreateObject` calls that send the key type beside
//! cryptoki's template ([`ck_template`]).
//!
//! And [`object`] and [`handle`], the one place a domain [`Handle`] and cryptoki's
//! [`ObjectHandle`] turn into each other.

use std::path::Path;

use cryptoki::context::Function;
use cryptoki::error::{Error as CkError, Rv, RvError};
use cryptoki::object::{Attribute, AttributeType, ObjectHandle};
use cryptoki::session::Session;
use zeroize::Zeroizing;

use crate::domain::handle::Handle;

/// The cryptoki handle of the object this token named `handle`.
///
/// hsm-sync's port and domain types carry opaque [`Handle`]s (valid for one run on one
/// token); cryptoki wants its own type back, which only `new_from_raw` forges.
pub(crate) fn object(handle: Handle) -> ObjectHandle {
    // SAFETY: `new_from_raw` is `unsafe` only because it lets a caller name any handle
    // (cryptoki: "ability for client to arbitrarily create object handles"); no memory is
    // at stake, since a handle is a number the token checks on every call. The handles
    // that reach here come from this token's own listing, find, create or unwrap in this
    // run ([`handle`]), or from the operator's `handle:` selector ([`Handle::claimed`]),
    // where a handle that names nothing is answered with CKR_OBJECT_HANDLE_INVALID and
    // read as "no key".
    unsafe { ObjectHandle::new_from_raw(handle.number()) }
}

/// The domain handle of an object the token handed out: where real tokens' handles are
/// minted (the other mint is the in-memory test store).
// The one sanctioned caller outside tests (clippy.toml, `domain/handle.rs`).
#[allow(clippy::disallowed_methods)]
pub(crate) fn handle(object: ObjectHandle) -> Handle {
    Handle::minted(object.handle())
}

/// A module's raw function list, beside cryptoki's context on the same library, for the
/// calls where cryptoki's convenience costs double (see the module header).
pub(crate) struct RawFns {
    /// The function list the module handed out (plain function pointers).
    f: cryptoki_sys::CK_FUNCTION_LIST,
    /// Keeps the library (and so the pointers in `f`) loaded.
    _lib: cryptoki_sys::Pkcs11,
}

impl RawFns {
    /// Loads the library again (the dynamic loader shares the instance cryptoki loaded)
    /// and takes its function list; `None` when the module offers none.
    pub(crate) fn load(path: &Path) -> Option<RawFns> {
        // SAFETY: the library is the PKCS#11 module cryptoki already loaded and
        // initialised; C_GetFunctionList only hands out a pointer to its static table,
        // which stays valid while `_lib` keeps the library loaded.
        unsafe {
            let lib = cryptoki_sys::Pkcs11::new(path).ok()?;
            let get = *lib.C_GetFunctionList.as_ref().ok()?;
            let mut list: *mut cryptoki_sys::CK_FUNCTION_LIST = std::ptr::null_mut();
            if super::trace::raw("C_GetFunctionList", || get(&mut list)) != cryptoki_sys::CKR_OK || list.is_null() {
                return None;
            }
            Some(RawFns { f: *list, _lib: lib })
        }
    }

    /// `types` of object `h` in one raw `C_GetAttributeValue` on session `s`, with
    /// buffers sized in advance (`sizes`), not cryptoki's two calls (one to size, one to
    /// read). `None` when that is not possible (no such function, or a value larger than
    /// its buffer, or one of `must_have` unavailable): the caller then asks cryptoki,
    /// which sizes first.
    pub(crate) fn get_attribute_value(
        &self,
        s: &Session,
        h: ObjectHandle,
        types: &[AttributeType],
        sizes: &[usize],
        must_have: &[AttributeType],
    ) -> Option<Result<RawRead, CkError>> {
        let get = self.f.C_GetAttributeValue?;
        let mut buf = vec![0u8; sizes.iter().sum()];
        let mut template = Vec::with_capacity(types.len());
        let mut at = 0;
        for (t, n) in types.iter().zip(sizes) {
            template.push(cryptoki_sys::CK_ATTRIBUTE {
                type_: (*t).into(),
                // SAFETY: `at + n` never exceeds the buffer (it is the sum of the sizes).
                pValue: unsafe { buf.as_mut_ptr().add(at) }.cast(),
                ulValueLen: *n as cryptoki_sys::CK_ULONG,
            });
            at += n;
        }
        // SAFETY: every template entry points at its own part of `buf`, of its stated
        // length; `buf` and `template` outlive the call. The session is the caller's.
        let rv = super::trace::raw("C_GetAttributeValue", || unsafe {
            get(
                s.handle(),
                h.handle(),
                template.as_mut_ptr(),
                template.len() as cryptoki_sys::CK_ULONG,
            )
        });
        match Rv::from(rv) {
            Rv::Ok | Rv::Error(RvError::AttributeSensitive | RvError::AttributeTypeInvalid) => {}
            Rv::Error(RvError::BufferTooSmall) => return None,
            other => {
                return Some(other.into_result(Function::GetAttributeValue).map(|()| RawRead {
                    attributes: Vec::new(),
                    key_type: None,
                }))
            }
        }
        // When another attribute's error (a sensitive value) is what the call returned, a
        // value too long for its buffer shows only as "unavailable", with no
        // CKR_BUFFER_TOO_SMALL: for what every object has, let cryptoki size it instead.
        if types
            .iter()
            .zip(&template)
            .any(|(t, a)| must_have.contains(t) && a.ulValueLen == cryptoki_sys::CK_UNAVAILABLE_INFORMATION)
        {
            return None;
        }
        let mut out = RawRead {
            attributes: Vec::with_capacity(types.len()),
            key_type: None,
        };
        let mut at = 0;
        for (a, n) in template.iter().zip(sizes) {
            let value = at..at + n;
            at += n;
            if a.ulValueLen == cryptoki_sys::CK_UNAVAILABLE_INFORMATION {
                continue;
            }
            if a.ulValueLen as usize > *n {
                return None;
            }
            if a.type_ == cryptoki_sys::CKA_KEY_TYPE {
                // The number itself: cryptoki's conversion below turns 0x2C–0x2E into 0x2B.
                out.key_type = buf
                    .get(value)
                    .and_then(|b| b.try_into().ok())
                    .map(cryptoki_sys::CK_ULONG::from_ne_bytes);
            }
            match Attribute::try_from(*a) {
                Ok(v) => out.attributes.push(v),
                Err(e) => return Some(Err(e)),
            }
        }
        Some(Ok(out))
    }

    /// Wraps `key` under `wrapping` with `mechanism` (one that takes no parameter) on
    /// session `s`, first into a buffer of `size` bytes (one call, where cryptoki makes
    /// two). Larger blobs are sized by the token's own length query, with 16 bytes to
    /// spare: NSS softokn's 0x210B query answers the input length, one block short
    /// (PKCS11-NOTES.md), so a size query is never trusted to the byte. Raw for every
    /// mechanism, so ids cryptoki 0.12 cannot name (0x210B, vendors') work alike.
    pub(crate) fn wrap_key(
        &self,
        s: &Session,
        mechanism: cryptoki_sys::CK_MECHANISM_TYPE,
        wrapping: ObjectHandle,
        key: ObjectHandle,
        size: usize,
    ) -> Result<Zeroizing<Vec<u8>>, CkError> {
        let wrap = self.f.C_WrapKey.ok_or(CkError::NullFunctionPointer)?;
        let mut mech = no_parameter(mechanism);
        let mut size = size;
        for _ in 0..3 {
            let mut buf = Zeroizing::new(vec![0u8; size]);
            let mut len = size as cryptoki_sys::CK_ULONG;
            // SAFETY: the mechanism takes no parameter; `buf` is writable for `len` bytes;
            // the session and handles are the caller's, on one token.
            let rv = super::trace::raw("C_WrapKey", || unsafe {
                wrap(
                    s.handle(),
                    &mut mech,
                    wrapping.handle(),
                    key.handle(),
                    buf.as_mut_ptr(),
                    &mut len,
                )
            });
            match Rv::from(rv) {
                Rv::Ok if len as usize <= size => {
                    buf.truncate(len as usize);
                    return Ok(buf);
                }
                Rv::Ok | Rv::Error(RvError::BufferTooSmall) => {
                    let mut needed: cryptoki_sys::CK_ULONG = 0;
                    // SAFETY: a NULL output asks only for the length, written to `needed`.
                    let rv = super::trace::raw("C_WrapKey", || unsafe {
                        wrap(
                            s.handle(),
                            &mut mech,
                            wrapping.handle(),
                            key.handle(),
                            std::ptr::null_mut(),
                            &mut needed,
                        )
                    });
                    Rv::from(rv).into_result(Function::WrapKey)?;
                    size = (needed as usize).max(size).saturating_add(16);
                }
                other => {
                    return Err(other
                        .into_result(Function::WrapKey)
                        .err()
                        .unwrap_or(CkError::NotSupported))
                }
            }
        }
        Err(CkError::Pkcs11(RvError::BufferTooSmall, Function::WrapKey))
    }

    /// Unwraps `blob` under `unwrapping` with `mechanism` (no parameter) as a new object
    /// of `key_type` made from `template`, on session `s`. Raw for the same reason as
    /// [`Self::wrap_key`], and for the key type (see [`ck_template`]).
    pub(crate) fn unwrap_key(
        &self,
        s: &Session,
        mechanism: cryptoki_sys::CK_MECHANISM_TYPE,
        unwrapping: ObjectHandle,
        blob: &[u8],
        key_type: cryptoki_sys::CK_KEY_TYPE,
        template: &[Attribute],
    ) -> Result<ObjectHandle, CkError> {
        let unwrap = self.f.C_UnwrapKey.ok_or(CkError::NullFunctionPointer)?;
        let mut mech = no_parameter(mechanism);
        let mut t = ck_template(template, &key_type);
        let mut blob = Zeroizing::new(blob.to_vec());
        let mut out: cryptoki_sys::CK_OBJECT_HANDLE = 0;
        // SAFETY: the mechanism takes no parameter; `blob` is readable for its length and
        // `t` points at live attribute values (`template`'s and `key_type`, both borrowed
        // for the call); `out` receives the new handle.
        let rv = super::trace::raw("C_UnwrapKey", || unsafe {
            unwrap(
                s.handle(),
                &mut mech,
                unwrapping.handle(),
                blob.as_mut_ptr(),
                blob.len() as cryptoki_sys::CK_ULONG,
                t.as_mut_ptr(),
                t.len() as cryptoki_sys::CK_ULONG,
                &mut out,
            )
        });
        Rv::from(rv).into_result(Function::UnwrapKey)?;
        // SAFETY: `out` is the handle the token just gave the new object (see `object`).
        Ok(unsafe { ObjectHandle::new_from_raw(out) })
    }

    /// Creates an object of `key_type` from `template` on session `s`: raw, so that a key
    /// type cryptoki 0.12 cannot hold is sent as it is (see [`ck_template`]).
    pub(crate) fn create_object(
        &self,
        s: &Session,
        key_type: cryptoki_sys::CK_KEY_TYPE,
        template: &[Attribute],
    ) -> Result<ObjectHandle, CkError> {
        let create = self.f.C_CreateObject.ok_or(CkError::NullFunctionPointer)?;
        let mut t = ck_template(template, &key_type);
        let mut out: cryptoki_sys::CK_OBJECT_HANDLE = 0;
        // SAFETY: `t` points at live attribute values (`template`'s and `key_type`, both
        // borrowed for the call); `out` receives the new handle.
        let rv = super::trace::raw("C_CreateObject", || unsafe {
            create(s.handle(), t.as_mut_ptr(), t.len() as cryptoki_sys::CK_ULONG, &mut out)
        });
        Rv::from(rv).into_result(Function::CreateObject)?;
        // SAFETY: `out` is the handle the token just gave the new object (see `object`).
        Ok(unsafe { ObjectHandle::new_from_raw(out) })
    }

    /// One `CK_ULONG` attribute of object `h`, read raw: cryptoki 0.12 maps
    /// `CKK_SHA224/384/512_HMAC` to the value of `CKK_SHA256_HMAC` when it reads a key
    /// type, so where the one-call read could not be made the key type of an HMAC key is
    /// confirmed here.
    pub(crate) fn ulong_attribute(
        &self,
        s: &Session,
        h: ObjectHandle,
        attribute: cryptoki_sys::CK_ATTRIBUTE_TYPE,
    ) -> Result<cryptoki_sys::CK_ULONG, CkError> {
        let get = self.f.C_GetAttributeValue.ok_or(CkError::NullFunctionPointer)?;
        let mut value: cryptoki_sys::CK_ULONG = 0;
        let mut t = cryptoki_sys::CK_ATTRIBUTE {
            type_: attribute,
            pValue: (&mut value as *mut cryptoki_sys::CK_ULONG).cast(),
            ulValueLen: std::mem::size_of::<cryptoki_sys::CK_ULONG>() as cryptoki_sys::CK_ULONG,
        };
        // SAFETY: one template entry pointing at `value`, of its size.
        let rv = super::trace::raw("C_GetAttributeValue", || unsafe {
            get(s.handle(), h.handle(), &mut t, 1)
        });
        Rv::from(rv).into_result(Function::GetAttributeValue)?;
        Ok(value)
    }

    /// Every mechanism id the token in `slot` offers, as the module lists them: cryptoki
    /// 0.12's list drops the ids it has no name for (0x210B among them).
    pub(crate) fn mechanism_list(
        &self,
        slot: cryptoki_sys::CK_SLOT_ID,
    ) -> Result<Vec<cryptoki_sys::CK_MECHANISM_TYPE>, CkError> {
        let list = self.f.C_GetMechanismList.ok_or(CkError::NullFunctionPointer)?;
        let mut n: cryptoki_sys::CK_ULONG = 0;
        // SAFETY: a NULL list asks only for the count.
        let rv = super::trace::raw("C_GetMechanismList", || unsafe {
            list(slot, std::ptr::null_mut(), &mut n)
        });
        Rv::from(rv).into_result(Function::GetMechanismList)?;
        let mut ids = vec![0; n as usize];
        // SAFETY: `ids` has room for the `n` entries the module announced.
        let rv = super::trace::raw("C_GetMechanismList", || unsafe { list(slot, ids.as_mut_ptr(), &mut n) });
        Rv::from(rv).into_result(Function::GetMechanismList)?;
        ids.truncate(n as usize);
        Ok(ids)
    }

    /// The `CKF_*` flags of one mechanism of the token in `slot` (whether it wraps, unwraps).
    pub(crate) fn mechanism_flags(
        &self,
        slot: cryptoki_sys::CK_SLOT_ID,
        mechanism: cryptoki_sys::CK_MECHANISM_TYPE,
    ) -> Result<cryptoki_sys::CK_FLAGS, CkError> {
        let info = self.f.C_GetMechanismInfo.ok_or(CkError::NullFunctionPointer)?;
        let mut out = cryptoki_sys::CK_MECHANISM_INFO {
            ulMinKeySize: 0,
            ulMaxKeySize: 0,
            flags: 0,
        };
        // SAFETY: `out` is a valid CK_MECHANISM_INFO for the module to fill.
        let rv = super::trace::raw("C_GetMechanismInfo", || unsafe { info(slot, mechanism, &mut out) });
        Rv::from(rv).into_result(Function::GetMechanismInfo)?;
        Ok(out.flags)
    }
}

/// What one raw `C_GetAttributeValue` read.
pub(crate) struct RawRead {
    /// The attributes the token gave, in cryptoki's types.
    pub(crate) attributes: Vec<Attribute>,
    /// `CKA_KEY_TYPE` as the token gave it, where it was read: cryptoki's `KeyType` turns
    /// `CKK_SHA224/384/512_HMAC` into `CKK_SHA256_HMAC`.
    pub(crate) key_type: Option<cryptoki_sys::CK_KEY_TYPE>,
}

/// `template` as the `CK_ATTRIBUTE`s a raw call takes, with `CKA_KEY_TYPE` (second, after
/// the class, as templates list it) pointing at `key_type`: cryptoki 0.12's `KeyType`
/// cannot hold `CKK_SHA224/384/512_HMAC` (its constants carry the value of
/// `CKK_SHA256_HMAC`), so no template names a key type through it. Each entry points into
/// its `Attribute` or at `key_type`: both must outlive the call that takes the result.
fn ck_template(template: &[Attribute], key_type: &cryptoki_sys::CK_KEY_TYPE) -> Vec<cryptoki_sys::CK_ATTRIBUTE> {
    debug_assert!(
        !template.iter().any(|a| matches!(a, Attribute::KeyType(_))),
        "the key type is sent raw, never in the template"
    );
    let mut t: Vec<cryptoki_sys::CK_ATTRIBUTE> = template.iter().map(Into::into).collect();
    let entry = cryptoki_sys::CK_ATTRIBUTE {
        type_: cryptoki_sys::CKA_KEY_TYPE,
        // The token only reads template values; the pointer is mutable in the C type alone.
        pValue: (key_type as *const cryptoki_sys::CK_KEY_TYPE).cast_mut().cast(),
        ulValueLen: std::mem::size_of::<cryptoki_sys::CK_KEY_TYPE>() as cryptoki_sys::CK_ULONG,
    };
    t.insert(t.len().min(1), entry);
    t
}

/// A `CK_MECHANISM` that takes no parameter (the AES key wraps).
fn no_parameter(mechanism: cryptoki_sys::CK_MECHANISM_TYPE) -> cryptoki_sys::CK_MECHANISM {
    cryptoki_sys::CK_MECHANISM {
        mechanism,
        pParameter: std::ptr::null_mut(),
        ulParameterLen: 0,
    }
}

/// `C_Initialize`'s arguments: `OS_LOCKING_OK` (SoftHSM turns its mutexes off without it)
/// and, where the plan gives `module_args`, that string as `pReserved` (NSS softokn
/// refuses NULL there: CKR_ARGUMENTS_BAD). The string must outlive the module.
pub(crate) fn init_args(module_args: Option<&std::ffi::CStr>) -> cryptoki::context::CInitializeArgs {
    use cryptoki::context::{CInitializeArgs, CInitializeFlags};
    match module_args.and_then(|a| std::ptr::NonNull::new(a.as_ptr().cast_mut().cast())) {
        // SAFETY: pReserved is the NUL-terminated string NSS softokn parses; the caller
        // keeps it alive beside the module's context.
        Some(p) => unsafe { CInitializeArgs::new_with_reserved(CInitializeFlags::OS_LOCKING_OK, p) },
        None => CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK),
    }
}
