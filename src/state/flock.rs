//! One writer per token: `apply` and `sync-key` hold an exclusive lock on every target
//! token before they read its inventory, so two runs of one plan never both create the
//! same key. The lock is an OS file lock (`flock`) on a file named after the token, in
//! `$HSM_SYNC_LOCK_DIR` (default: the system's temporary directory). The kernel drops it
//! when the holder exits, even on `kill -9`, so there is never a stale lock to clear.
//! It serialises runs on one machine; runs on different machines sharing a token are
//! not serialised, and the diff turns any duplicate they make into a `conflict`.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::PathBuf;

use miette::Diagnostic;
use sha2::{Digest, Sha256};

/// Why a lock could not be taken.
#[derive(Debug, thiserror::Error, Diagnostic)]
pub(crate) enum LockError {
    /// Another run holds it.
    #[error("cluster `{cluster}` is being changed by another hsm-sync run ({holder}); nothing was changed")]
    #[diagnostic(
        code(lock::busy),
        help("wait for that run to finish, then run again; the lock goes with its process")
    )]
    Busy {
        /// The cluster.
        cluster: String,
        /// What the lock file says about its holder.
        holder: String,
    },
    /// The lock file cannot be made.
    #[error("cannot lock cluster `{cluster}` at {path}: {source}")]
    #[diagnostic(code(lock::io), help("set HSM_SYNC_LOCK_DIR to a writable directory"))]
    Io {
        /// The cluster.
        cluster: String,
        /// The lock file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Locks held for a run; released on drop (or by the kernel when the process dies).
#[derive(Debug)]
pub(crate) struct RunLock {
    _files: Vec<File>,
}

/// One token to lock: its cluster name and what identifies the token on this machine.
pub(crate) struct LockTarget<'a> {
    /// The plan's cluster name (for messages).
    pub cluster: &'a str,
    /// Manufacturer, model, serial and label: the same token through any module path.
    pub identity: String,
}

fn dir() -> PathBuf {
    std::env::var_os("HSM_SYNC_LOCK_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("hsm-sync-locks"))
}

/// Takes every lock, or none: the first busy token stops the run before anything is read.
pub(crate) fn acquire(targets: &[LockTarget], command: &str) -> Result<RunLock, LockError> {
    let dir = dir();
    let mut files = Vec::new();
    for t in targets {
        let name = hex::encode(&Sha256::digest(t.identity.as_bytes())[..12]);
        let path = dir.join(format!("{name}.lock"));
        let io = |source| LockError::Io {
            cluster: t.cluster.to_string(),
            path: path.clone(),
            source,
        };
        if !dir.is_dir() {
            std::fs::create_dir_all(&dir).map_err(io)?;
            // Shared by every user of the machine, like /tmp itself.
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777));
        }
        let opened = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path);
        let mut f = match opened {
            Ok(f) => f,
            // Another user's lock file: flock works on a read-only descriptor too.
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => File::open(&path).map_err(io)?,
            Err(e) => return Err(io(e)),
        };
        match f.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = f.read_to_string(&mut holder);
                let holder = holder.trim();
                return Err(LockError::Busy {
                    cluster: t.cluster.to_string(),
                    holder: if holder.is_empty() {
                        "starting".into()
                    } else {
                        holder.to_string()
                    },
                });
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        // Who holds it, for the message another run prints. Best effort: the lock is
        // what matters, not this note.
        let note = format!(
            "{command}, pid {}, since {}",
            std::process::id(),
            humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        );
        let _ = f
            .set_len(0)
            .and_then(|()| f.rewind())
            .and_then(|()| f.write_all(note.as_bytes()));
        files.push(f);
    }
    Ok(RunLock { _files: files })
}
