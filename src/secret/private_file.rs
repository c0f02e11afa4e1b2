//! Files only keyward's user may read: opened never through a symbolic link, created 0600, and
//! checked (owner, mode) before what is in them is trusted. The login, the ledger, the record
//! of response owners, client tokens, dumps and the state key are kept in such files.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::secret::hardening;

/// Why a private file or directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PrivateError {
    #[error("{}: {what}", path.display())]
    Unsafe { path: PathBuf, what: String },
    #[error("{}: {error}", path.display())]
    Io { path: PathBuf, error: io::Error },
}

/// Options that open a file never through a symbolic link and, when they create it, 0600. Add
/// the access (`read`, `append`, `create`, ...) and open.
pub fn options() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.mode(0o600).custom_flags(libc::O_NOFOLLOW);
    options
}

/// Opens (creating, 0600, never through a symlink) and exclusively locks the file at `path`,
/// waiting for another process to release it. The lock lasts as long as the returned file.
pub fn lock_file(path: &Path) -> io::Result<File> {
    let file = options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    file.lock()?;
    Ok(file)
}

/// Refuses `path` if it is a symbolic link, is not owned by keyward's user, or if group or
/// others have any access; the error says how to fix it.
pub fn check(path: &Path, is_dir: bool) -> Result<(), PrivateError> {
    let meta = fs::symlink_metadata(path).map_err(|error| PrivateError::Io {
        path: path.to_owned(),
        error,
    })?;
    let unsafe_because = |what: String| PrivateError::Unsafe {
        path: path.to_owned(),
        what,
    };
    if meta.file_type().is_symlink() {
        return Err(unsafe_because(
            "is a symbolic link; keyward uses only a real file or directory here".into(),
        ));
    }
    let me = hardening::effective_uid();
    if meta.uid() != me {
        return Err(unsafe_because(format!(
            "is owned by uid {}, not by keyward's user (uid {me}); fix with: chown {me} {}",
            meta.uid(),
            path.display()
        )));
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        let want = if is_dir { "700" } else { "600" };
        return Err(unsafe_because(format!(
            "other users can read or write it (mode {mode:o}); fix with: chmod {want} {}",
            path.display()
        )));
    }
    Ok(())
}
