//! PIN sources and the secret type they produce. A PIN is read only at login time, lives
//! in a [`SecretString`] (zeroized on drop, redacted in `Debug`) and is never serialized.

use std::path::{Path, PathBuf};

use secrecy::SecretString;
use zeroize::Zeroizing;

/// Where a cluster's PIN comes from. Holds the *location*, never the PIN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinSource {
    /// An environment variable.
    Env(String),
    /// A file, already resolved against the plan's directory.
    File(PathBuf),
}

impl std::fmt::Display for PinSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PinSource::Env(v) => write!(f, "environment variable {v}"),
            PinSource::File(p) => write!(f, "file {}", p.display()),
        }
    }
}

/// Why a PIN could not be read. Never carries the PIN.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// The variable is unset.
    #[error("environment variable {0} is not set")]
    EnvUnset(String),
    /// The variable is not valid UTF-8.
    #[error("environment variable {0} is not valid UTF-8")]
    EnvNotUnicode(String),
    /// The file cannot be read.
    #[error("cannot read PIN file {path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The PIN is empty.
    #[error("the PIN from {0} is empty")]
    Empty(String),
    /// The file is not valid UTF-8.
    #[error("PIN file {0} is not valid UTF-8")]
    FileNotUnicode(PathBuf),
}

impl PinSource {
    /// Reads the PIN. Trailing newlines of a file are dropped (editors add them).
    pub fn read(&self) -> Result<SecretString, CredentialError> {
        let pin: Zeroizing<String> = match self {
            PinSource::Env(var) => match std::env::var(var) {
                Ok(v) => Zeroizing::new(v),
                Err(std::env::VarError::NotPresent) => return Err(CredentialError::EnvUnset(var.clone())),
                Err(std::env::VarError::NotUnicode(_)) => return Err(CredentialError::EnvNotUnicode(var.clone())),
            },
            PinSource::File(path) => {
                let bytes = Zeroizing::new(std::fs::read(path).map_err(|source| CredentialError::File {
                    path: path.clone(),
                    source,
                })?);
                match std::str::from_utf8(&bytes) {
                    Ok(s) => Zeroizing::new(s.to_string()),
                    Err(_) => return Err(CredentialError::FileNotUnicode(path.clone())),
                }
            }
        };
        let trimmed = pin.trim_end_matches(['\r', '\n']);
        if trimmed.is_empty() {
            return Err(CredentialError::Empty(self.to_string()));
        }
        Ok(SecretString::from(trimmed.to_string()))
    }
}

/// Whether a PIN file can be read by its group or by others (unix mode bits `0o077`).
pub fn loosely_readable(path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o044 != 0)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn file_pins_lose_their_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pin");
        std::fs::write(&p, "1234\n").unwrap();
        assert_eq!(PinSource::File(p).read().unwrap().expose_secret(), "1234");
    }

    #[test]
    fn errors_name_the_source_but_never_the_pin() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pin");
        std::fs::write(&p, "\n").unwrap();
        let e = PinSource::File(p).read().unwrap_err().to_string();
        assert!(e.contains("is empty"), "{e}");
        let e = PinSource::Env("HSM_SYNC_SURELY_UNSET_VAR".into()).read().unwrap_err();
        assert!(e.to_string().contains("HSM_SYNC_SURELY_UNSET_VAR"));
    }

    #[test]
    fn group_readable_files_are_flagged() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pin");
        std::fs::write(&p, "1234").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(!loosely_readable(&p));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(loosely_readable(&p));
    }
}
