//! Where a serving keyward may read and write, from its configuration: the file rules of its
//! sandbox (`crate::secret::sandbox`).

use std::path::{Path, PathBuf};

use crate::config::access::ClientTokenSource;
use crate::config::{Config, CredentialConfig};
use crate::secret::sandbox::Paths;

impl Config {
    /// What keyward opens after start. Files that are replaced by a new file rather than
    /// rewritten (the configuration file by an editor, client tokens by `keyward token`, a
    /// renewed certificate) are allowed through their directory, so the rule follows the new
    /// file; the directories keyward keeps its own files in are writable.
    pub fn sandbox_paths(&self) -> Paths {
        let mut paths = Paths::default();
        let replaced = self
            .config_file
            .iter()
            .chain(self.tls.iter().flat_map(|tls| [&tls.cert, &tls.key]))
            .chain(match &self.access.client_tokens {
                Some(ClientTokenSource::File(file)) => Some(file),
                _ => None,
            });
        for file in replaced {
            paths.read.extend(directories_of(file));
        }
        if let Some(state) = &self.state {
            let db = &state.db;
            paths.read.extend(
                [&db.ca, &db.key_file, &db.password_file]
                    .into_iter()
                    .flatten()
                    .cloned(),
            );
            paths.write.extend(directory(&state.unsent));
        }
        paths.read.extend(self.upstream_ca.iter().cloned());
        if let CredentialConfig::ChatGpt(chatgpt) = &self.credential {
            // The login (refreshed tokens are written there; `keyward login` replaces it).
            paths.write.push(chatgpt.home.clone());
        }
        if let Some(dump) = &self.dump {
            paths.write.push(dump.dir.clone());
        }
        if let Some(file) = self.ownership.as_ref().and_then(|o| o.file.as_ref()) {
            // Compacted through a new file renamed over it.
            paths.write.extend(directory(file));
        }
        for socket in &self.unix {
            // Removed at exit.
            paths.remove.extend(directory(&socket.path));
        }
        paths
    }
}

fn directory(file: &Path) -> Option<PathBuf> {
    match file.parent() {
        Some(dir) if dir.as_os_str().is_empty() => Some(PathBuf::from(".")),
        dir => dir.map(Path::to_owned),
    }
}

/// The directory of `file` as named, and of the file it leads to through symbolic links (a
/// certificate in `/etc/letsencrypt/live` is a link into `archive`).
fn directories_of(file: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = directory(file).into_iter().collect();
    if let Ok(real) = std::fs::canonicalize(file)
        && let Some(dir) = directory(&real)
        && !dirs.contains(&dir)
    {
        dirs.push(dir);
    }
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_reached_through_a_link_is_readable_through_both_directories() {
        let root = tempfile::tempdir().unwrap();
        let (live, archive) = (root.path().join("live"), root.path().join("archive"));
        std::fs::create_dir(&live).unwrap();
        std::fs::create_dir(&archive).unwrap();
        std::fs::write(archive.join("cert1.pem"), "").unwrap();
        std::os::unix::fs::symlink(archive.join("cert1.pem"), live.join("cert.pem")).unwrap();
        let dirs = directories_of(&live.join("cert.pem"));
        assert_eq!(dirs, [live, std::fs::canonicalize(archive).unwrap()]);
        assert_eq!(
            directories_of(Path::new("tokens.json")),
            [PathBuf::from(".")]
        );
    }
}
