//! A key's fingerprint as a type: known, not wrappable (tried: the token refused to wrap
//! it), or deferred (not tried yet: apply's first sync lets each copy job's own wrap be
//! the test). `Option<String>` plus an inventory-wide "deferred" flag said the same with
//! room for mistakes (a failed wrap once read as "deferred" and became a false create).

/// What is known of a key's material, without revealing it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Fingerprint {
    /// The digest (CONTRACT.md §1): equal on every token for equal keys.
    Known(compact_str::CompactString),
    /// A wrap was tried and refused: the key cannot leave its token.
    NotWrappable,
    /// Not tried: the copy job's wrap will fingerprint (or fail) it.
    #[default]
    Deferred,
}

impl Fingerprint {
    /// The result of a try: a digest, or `None` when the key cannot be wrapped.
    pub fn tried(digest: Option<String>) -> Fingerprint {
        digest.map_or(Fingerprint::NotWrappable, |d| Fingerprint::Known(d.into()))
    }

    /// The digest, where known.
    pub fn known(&self) -> Option<&str> {
        match self {
            Fingerprint::Known(d) => Some(d),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_try_is_known_or_not_wrappable_never_deferred() {
        assert_eq!(Fingerprint::tried(Some("ab".into())).known(), Some("ab"));
        assert_eq!(Fingerprint::tried(None), Fingerprint::NotWrappable);
        assert_eq!(Fingerprint::default(), Fingerprint::Deferred);
        assert_eq!(Fingerprint::Deferred.known(), None);
    }
}
