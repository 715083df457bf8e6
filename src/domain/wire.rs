//! The wire format of a wrapped key between two tokens (CONTRACT §1 "Wire format and
//! portability"): what a pair agrees on, whatever each side calls its mechanism.

use serde::{Deserialize, Serialize};

/// How a key travels from a source to a target, wrapped under their domain key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WireFormat {
    /// AES key wrap with padding: any length, private keys (PKCS#8) included.
    Rfc5649,
    /// AES key wrap: only values whose length is a multiple of 8.
    Rfc3394,
}

impl WireFormat {
    /// Every format, the preferred first.
    pub const ALL: [WireFormat; 2] = [WireFormat::Rfc5649, WireFormat::Rfc3394];

    /// The name in plans, reports and messages.
    pub fn code(self) -> &'static str {
        match self {
            WireFormat::Rfc5649 => "rfc5649",
            WireFormat::Rfc3394 => "rfc3394",
        }
    }

    /// Whether a key value of `len` bytes travels in this format unchanged.
    pub fn carries(self, len: usize) -> bool {
        match self {
            WireFormat::Rfc5649 => true,
            WireFormat::Rfc3394 => len >= 16 && len.is_multiple_of(8),
        }
    }
}

impl std::fmt::Display for WireFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}
