//! How a plan names a token among a module's slots: shared by the plan (which parses it)
//! and the token layer (which looks for it), so neither imports the other.

/// How a token is picked among a module's slots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenRef {
    /// By `CK_TOKEN_INFO.label`.
    Label(String),
    /// By serial number.
    Serial(String),
    /// By slot id.
    Slot(u64),
}

impl std::fmt::Display for TokenRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenRef::Label(l) => write!(f, "label `{l}`"),
            TokenRef::Serial(s) => write!(f, "serial `{s}`"),
            TokenRef::Slot(s) => write!(f, "slot {s}"),
        }
    }
}
