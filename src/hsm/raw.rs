//! The FFI edge: every `unsafe` block and every raw PKCS#11 call of the crate lives in
//! this file, so a reviewer audits one page. Three calls go past cryptoki, where its
//! convenience costs double (PKCS11-NOTES.md, issue 6): the module's function list is
//! loaded beside cryptoki's context; `C_GetAttributeValue` is made once with buffers
//! sized in advance (cryptoki asks for the sizes first); `C_WrapKey` is made once into a
//! buffer sized for the key's class (cryptoki calls it twice, and the token does the
//! whole wrap both times). Each returns `None` where cryptoki's own call must do instead.
//!
//! And [`object`], the one place a plain number becomes a cryptoki [`ObjectHandle`].

use std::path::Path;

use cryptoki::context::Function;
use cryptoki::error::{Error as CkError, Rv, RvError};
use cryptoki::object::{Attribute, AttributeType, ObjectHandle};
use cryptoki::session::Session;
use zeroize::Zeroizing;

/// The cryptoki handle of an object this token named by `handle`.
///
/// hsm-sync's port and domain types carry handles as plain numbers (valid for one run on
/// one token); cryptoki wants its own type back, which only `new_from_raw` forges.
pub(crate) fn object(handle: u64) -> ObjectHandle {
    // SAFETY: `new_from_raw` is `unsafe` only because it lets a caller name any handle
    // (cryptoki: "ability for client to arbitrarily create object handles"); no memory is
    // at stake, since a handle is a number the token checks on every call. The numbers
    // that reach here come from this token's own listing, find, create or unwrap in this
    // run, or from the operator's `handle:` selector, where a handle that names nothing
    // is answered with CKR_OBJECT_HANDLE_INVALID and read as "no key".
    unsafe { ObjectHandle::new_from_raw(handle) }
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
    ) -> Option<Result<Vec<Attribute>, CkError>> {
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
            other => return Some(other.into_result(Function::GetAttributeValue).map(|()| Vec::new())),
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
        let mut out = Vec::with_capacity(types.len());
        for (a, n) in template.iter().zip(sizes) {
            if a.ulValueLen == cryptoki_sys::CK_UNAVAILABLE_INFORMATION {
                continue;
            }
            if a.ulValueLen as usize > *n {
                return None;
            }
            match Attribute::try_from(*a) {
                Ok(v) => out.push(v),
                Err(e) => return Some(Err(e)),
            }
        }
        Some(Ok(out))
    }

    /// Wraps `key` under `wrapping` with `mechanism` (one that takes no parameter) in one
    /// `C_WrapKey` on session `s`, into a buffer of `size` bytes. `None` when the
    /// module has no such function or the blob is larger than foreseen: the caller then
    /// lets cryptoki ask for the size.
    pub(crate) fn wrap_key(
        &self,
        s: &Session,
        mechanism: cryptoki_sys::CK_MECHANISM_TYPE,
        wrapping: ObjectHandle,
        key: ObjectHandle,
        size: usize,
    ) -> Option<Result<Zeroizing<Vec<u8>>, CkError>> {
        let wrap = self.f.C_WrapKey?;
        let mut buf = Zeroizing::new(vec![0u8; size]);
        let mut len = size as cryptoki_sys::CK_ULONG;
        let mut mech = cryptoki_sys::CK_MECHANISM {
            mechanism,
            pParameter: std::ptr::null_mut(),
            ulParameterLen: 0,
        };
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
                Some(Ok(buf))
            }
            // Larger than foreseen: let cryptoki ask for the size.
            Rv::Ok | Rv::Error(RvError::BufferTooSmall) => None,
            other => Some(Err(other
                .into_result(Function::WrapKey)
                .err()
                .unwrap_or(CkError::NotSupported))),
        }
    }
}
