//! Object handles: a token's own name for one of its objects, valid for one run on that
//! token. Opaque, like cryptoki's `ObjectHandle` (STYLE.md habit 6; issue 13): nothing
//! outside `hsm/` makes one up, so a handle in the executor, the diff or the report is one
//! the token handed out, or a number an operator typed and the token will check.
//!
//! How "minted by `hsm/` only" is enforced: the type has to live in the domain (keys,
//! reports and saved plans carry it, and the domain never names `hsm`), and Rust cannot
//! restrict a constructor to a module that is not an ancestor of the type's own. So
//! `Handle::minted` is `pub(crate)` and listed under `disallowed-methods` in
//! `clippy.toml`; the two mints, `hsm/raw.rs` (from cryptoki's `ObjectHandle`) and the
//! in-memory test store, allow the lint where they call it, and `clippy -D warnings`
//! rejects any other caller. The one other door is [`Handle::claimed`], named for what it
//! is: an operator's (or a file's) number that only the token can confirm.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A token object's handle, valid for this run on the token that listed, found, created
/// or unwrapped it. Serialises as the bare number (report `key.handle`, saved plans and
/// inventory JSON are unchanged) and displays as it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
// A handle read back from a file (a saved plan, a report) is a claim, like
// [`Handle::claimed`]: nothing trusts it until a token answers for it.
#[serde(transparent)]
pub struct Handle(u64);

impl Handle {
    /// The handle a token gave out as `raw`. Minted by `hsm/` only (`clippy.toml`
    /// disallows every other caller; see the module header).
    #[doc(hidden)]
    pub(crate) const fn minted(raw: u64) -> Handle {
        Handle(raw)
    }

    /// An operator's number (a `handle: N` selector, `sync-key <handle>`) taken as a
    /// handle. It is a claim, not a fact: the token checks it on use, and a number that
    /// names nothing reads as "no key" (`CKR_OBJECT_HANDLE_INVALID`).
    pub const fn claimed(number: u64) -> Handle {
        Handle(number)
    }

    /// A handle as a token would hand it out, for unit tests that build keys by hand and
    /// so stand in for the token.
    #[cfg(test)]
    pub(crate) const fn fixture(number: u64) -> Handle {
        Handle(number)
    }

    /// The number, as the token and the wire formats spell it.
    pub const fn number(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handle_is_its_number_on_the_wire_and_on_screen() {
        let h = Handle::claimed(261251);
        assert_eq!(serde_json::to_string(&h).unwrap(), "261251");
        assert_eq!(serde_json::from_str::<Handle>("261251").unwrap(), h);
        assert_eq!(format!("handle={h} [{h:>8}]"), "handle=261251 [  261251]");
        assert_eq!(h.number(), 261251);
    }
}
