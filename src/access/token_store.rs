//! Where the client tokens are kept, as the `keyward token` commands change them: the
//! [`TokenStore`] interface, and its file ([`TokenFile`]). The state database's table is the other
//! implementation (`crate::state::clients::SharedClients`). [`crate::access::clients`] checks
//! the tokens a request presents.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::access::client_token::{is_client_name, new_token};
use crate::access::clients::{Client, ClientsError, FileContents, read};
use crate::secret::SecretString;

/// Where the client tokens are kept, as the `keyward token` commands see them: a file
/// ([`TokenFile`]) or the state database's table (`crate::state::clients::SharedClients`). Both
/// hold names and SHA-256 hashes, never tokens.
pub trait TokenStore {
    type Error: std::error::Error + Send + Sync + 'static;
    /// Where they are, for messages.
    fn describe(&self) -> String;
    /// Every client, oldest first.
    fn list(&self) -> Result<Vec<Client>, Self::Error>;
    /// Adds a client and returns its new token: the only time the token exists outside the
    /// client's hands.
    fn add(&self, name: &str, groups: &[String]) -> Result<SecretString, Self::Error>;
    /// Removes a client; a running keyward refuses its token soon after.
    fn revoke(&self, name: &str) -> Result<(), Self::Error>;
}

impl TokenStore for TokenFile {
    type Error = ClientsError;

    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    fn list(&self) -> Result<Vec<Client>, ClientsError> {
        TokenFile::list(self)
    }

    fn add(&self, name: &str, groups: &[String]) -> Result<SecretString, ClientsError> {
        TokenFile::add(self, name, groups)
    }

    fn revoke(&self, name: &str) -> Result<(), ClientsError> {
        TokenFile::revoke(self, name)
    }
}

/// The client tokens file, read and written by the `keyward token` commands.
pub struct TokenFile {
    path: PathBuf,
}

impl TokenFile {
    pub fn new(path: PathBuf) -> Self {
        Self { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The clients in the file; a file that does not exist yet has none.
    pub fn list(&self) -> Result<Vec<Client>, ClientsError> {
        match read(&self.path) {
            Ok((clients, _)) => Ok(clients),
            Err(ClientsError::Io { error, .. }) if error.kind() == io::ErrorKind::NotFound => {
                Ok(Vec::new())
            }
            Err(err) => Err(err),
        }
    }

    /// Adds a client and returns its new token: the only time the token exists outside the
    /// client's hands.
    pub fn add(&self, name: &str, groups: &[String]) -> Result<SecretString, ClientsError> {
        let (token, client) = new_client(name, groups)?;
        let _lock = self.lock()?;
        let mut clients = self.list()?;
        if clients.iter().any(|c| c.name == name) {
            return Err(ClientsError::Exists(name.to_owned()));
        }
        clients.push(client);
        self.write(&clients)?;
        Ok(token)
    }

    /// Removes a client: its token stops working within a second in a running keyward.
    pub fn revoke(&self, name: &str) -> Result<(), ClientsError> {
        let _lock = self.lock()?;
        let mut clients = self.list()?;
        let before = clients.len();
        clients.retain(|c| c.name != name);
        if clients.len() == before {
            return Err(ClientsError::NoSuchClient(name.to_owned()));
        }
        self.write(&clients)
    }

    /// Serialises the commands that change the file, across processes.
    fn lock(&self) -> Result<fs::File, ClientsError> {
        let mut path = self.path.clone().into_os_string();
        path.push(".lock");
        let path = PathBuf::from(path);
        crate::secret::private_file::lock_file(&path)
            .map_err(|error| ClientsError::Io { path, error })
    }

    /// Replaces the file atomically, 0600.
    fn write(&self, clients: &[Client]) -> Result<(), ClientsError> {
        let io_err = |error| ClientsError::Io {
            path: self.path.clone(),
            error,
        };
        let dir = match self.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        let mut file = tempfile::Builder::new()
            .prefix(".keyward-clients")
            .permissions(fs::Permissions::from_mode(0o600))
            .tempfile_in(dir)
            .map_err(io_err)?;
        let contents = FileContents {
            version: 1,
            clients: clients.to_vec(),
        };
        let json =
            serde_json::to_string_pretty(&contents).map_err(|e| io_err(io::Error::other(e)))?;
        file.write_all(json.as_bytes()).map_err(io_err)?;
        file.write_all(b"\n").map_err(io_err)?;
        file.as_file().sync_all().map_err(io_err)?;
        file.persist(&self.path).map_err(|e| io_err(e.error))?;
        Ok(())
    }
}

/// A new client named `name`, in `groups`: its token (shown once), and what is stored of it.
pub fn new_client(name: &str, groups: &[String]) -> Result<(SecretString, Client), ClientsError> {
    if let Some(bad) = std::iter::once(name)
        .chain(groups.iter().map(String::as_str))
        .find(|n| !is_client_name(n))
    {
        return Err(ClientsError::BadName(bad.to_owned()));
    }
    let (token, sha256) = new_token().map_err(ClientsError::Random)?;
    let created = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let client = Client {
        name: name.to_owned(),
        sha256,
        created,
        groups: groups.to_vec(),
    };
    Ok((token, client))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::clients::ClientTokens;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn a_client_s_groups_are_kept_and_older_files_without_them_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("clients.json");
        let file = TokenFile::new(path.clone());
        file.add("ci", &["robots".to_owned(), "nightly".to_owned()])
            .unwrap();
        file.add("laptop", &[]).unwrap();
        let listed = file.list().unwrap();
        assert_eq!(listed[0].groups, ["robots", "nightly"]);
        assert!(listed[1].groups.is_empty());
        let tokens = ClientTokens::open(&path).unwrap();
        assert_eq!(&*tokens.groups_of("ci"), ["robots", "nightly"]);
        assert!(tokens.groups_of("laptop").is_empty() && tokens.groups_of("nobody").is_empty());
        assert!(matches!(
            file.add("x", &["no/slash".to_owned()]),
            Err(ClientsError::BadName(_))
        ));
        // A file written before groups existed.
        let text = fs::read_to_string(&path).unwrap();
        let old: serde_json::Value = serde_json::from_str(&text).unwrap();
        let mut old = old;
        old["clients"][0].as_object_mut().unwrap().remove("groups");
        fs::write(&path, old.to_string()).unwrap();
        assert!(file.list().unwrap()[0].groups.is_empty());
    }

    #[test]
    fn add_verify_revoke_and_the_file_holds_no_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("clients.json");
        let file = TokenFile::new(path.clone());
        let ci = file.add("ci", &[]).unwrap();
        let laptop = file.add("laptop", &[]).unwrap();
        assert!(ci.expose().starts_with("kw-"));
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        let text = fs::read_to_string(&path).unwrap();
        assert!(!text.contains(ci.expose()) && text.contains("\"ci\""));

        let tokens = ClientTokens::open(&path).unwrap();
        assert_eq!(tokens.verify(ci.expose().as_bytes()).as_deref(), Some("ci"));
        assert_eq!(
            tokens.verify(laptop.expose().as_bytes()).as_deref(),
            Some("laptop")
        );
        assert_eq!(tokens.verify(b"kw-wrong"), None);
        assert!(matches!(file.add("ci", &[]), Err(ClientsError::Exists(_))));
        assert!(matches!(
            file.add("../x", &[]),
            Err(ClientsError::BadName(_))
        ));

        file.revoke("ci").unwrap();
        assert!(matches!(
            file.revoke("ci"),
            Err(ClientsError::NoSuchClient(_))
        ));
        // The running side notices within RECHECK.
        tokens.recheck_now();
        assert_eq!(tokens.verify(ci.expose().as_bytes()), None);
        assert_eq!(
            tokens.verify(laptop.expose().as_bytes()).as_deref(),
            Some("laptop")
        );
    }

    #[test]
    fn a_loose_mode_or_a_corrupt_file_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("clients.json");
        TokenFile::new(path.clone()).add("ci", &[]).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = ClientTokens::open(&path).err().unwrap().to_string();
        assert!(err.contains("chmod 600"), "{err}");

        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(&path, "{\"version\":1,\"clients\":[{\"name\":\"x\"").unwrap();
        let err = ClientTokens::open(&path).err().unwrap().to_string();
        assert!(err.contains("not a valid client tokens file"), "{err}");
    }
}
