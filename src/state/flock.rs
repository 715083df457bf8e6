//! One writer per token: `apply` and `sync-key` hold an exclusive lock on every target
//! token before they read its inventory, so two runs never both create the same key. The
//! lock is an OS file lock (`flock`) on a file named after the token's identity, in a
//! directory: `$HSM_SYNC_LOCK_DIR` (default: the system's temporary directory) for the
//! token and postgres backends, the state directory for the file backend. The kernel drops
//! it when the holder exits, even on `kill -9`, so there is never a stale lock to clear.
//! On one machine's directory it serialises that machine's runs; the postgres backend adds
//! a database lock for runs on different machines, the file backend a shared directory.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use miette::Diagnostic;

/// Why a lock could not be taken.
#[derive(Debug, thiserror::Error, Diagnostic)]
pub(crate) enum LockError {
    /// Another run holds it.
    #[error("cluster `{cluster}` is being changed by another hsm-sync run ({holder}); nothing was changed")]
    #[diagnostic(
        code(lock::busy),
        help("wait for that run to finish (or pass --lock-timeout to wait for it), then run again; the lock goes with its process")
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

/// One token to lock: its cluster name and its identity ([`super::token_id`]).
pub(crate) struct LockTarget<'a> {
    /// The plan's cluster name (for messages).
    pub cluster: &'a str,
    /// The token's identity: the same token through any module path.
    pub id: &'a str,
}

/// This machine's lock directory: `$HSM_SYNC_LOCK_DIR`, else the temporary directory's
/// `hsm-sync-locks`.
pub(crate) fn machine_dir() -> PathBuf {
    std::env::var_os("HSM_SYNC_LOCK_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("hsm-sync-locks"))
}

/// The plan's clusters `clusters` as lock targets, each by its token's identity in `ids`.
pub(crate) fn targets<'a>(ids: &'a super::TokenIds, clusters: &[&'a str]) -> Vec<LockTarget<'a>> {
    clusters
        .iter()
        .map(|c| LockTarget {
            cluster: c,
            id: super::id_of(ids, c),
        })
        .collect()
}

/// Takes every lock in `dir`, or none: the first token still busy after `wait` stops the
/// run before anything is read.
pub(crate) fn acquire(dir: &Path, targets: &[LockTarget], command: &str, wait: Duration) -> Result<RunLock, LockError> {
    let started = Instant::now();
    let mut files = Vec::new();
    for t in targets {
        let path = dir.join(format!("{}.lock", t.id));
        let io = |source| LockError::Io {
            cluster: t.cluster.to_string(),
            path: path.clone(),
            source,
        };
        if !dir.is_dir() {
            std::fs::create_dir_all(dir).map_err(io)?;
            // Shared by every user of the machine, like /tmp itself.
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o1777));
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
        let locked = loop {
            match f.try_lock() {
                Err(TryLockError::WouldBlock) if started.elapsed() < wait => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                other => break other,
            }
        };
        match locked {
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
