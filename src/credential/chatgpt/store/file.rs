//! The default store: `login.json` in the home, mode 0600, replaced atomically.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use zeroize::Zeroizing;

use super::{LoginStore, StoreError};
use crate::credential::chatgpt::home::{self, Home};
use crate::credential::chatgpt::record::Login;

pub struct FileStore {
    path: PathBuf,
}

impl FileStore {
    pub fn new(home: &Home) -> Self {
        Self {
            path: home.login_file(),
        }
    }

    fn io(&self, action: &'static str) -> impl FnOnce(io::Error) -> StoreError + '_ {
        move |error| StoreError::Io {
            action,
            path: self.path.clone(),
            error,
        }
    }
}

impl LoginStore for FileStore {
    fn load(&self) -> Result<Option<Login>, StoreError> {
        match fs::symlink_metadata(&self.path) {
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(self.io("read")(err)),
            Ok(_) => home::check_private(&self.path, false)?,
        }
        let bytes = Zeroizing::new(fs::read(&self.path).map_err(self.io("read"))?);
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                path: self.path.clone(),
                // serde_json's message gives the position and the kind of error, not the content.
                detail: format!(
                    "{} at line {} column {}",
                    classify(&e),
                    e.line(),
                    e.column()
                ),
            })
    }

    fn save(&self, login: &Login) -> Result<(), StoreError> {
        let dir = self.path.parent().unwrap_or(std::path::Path::new("."));
        let json = Zeroizing::new(
            serde_json::to_vec_pretty(login).map_err(|e| self.io("write")(io::Error::other(e)))?,
        );
        let mut tmp = tempfile::Builder::new()
            .prefix(".login-")
            .permissions(fs::Permissions::from_mode(0o600))
            .tempfile_in(dir)
            .map_err(self.io("write"))?;
        tmp.write_all(&json).map_err(self.io("write"))?;
        tmp.as_file().sync_all().map_err(self.io("write"))?;
        tmp.persist(&self.path)
            .map_err(|e| self.io("replace")(e.error))?;
        sync_dir(dir).map_err(self.io("write"))
    }

    fn delete(&self) -> Result<bool, StoreError> {
        match fs::remove_file(&self.path) {
            Ok(()) => {
                let dir = self.path.parent().unwrap_or(std::path::Path::new("."));
                sync_dir(dir).map_err(self.io("delete"))?;
                Ok(true)
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(err) => Err(self.io("delete")(err)),
        }
    }

    fn describe(&self) -> String {
        format!("file {}", self.path.display())
    }
}

/// Makes a rename or removal in `dir` durable.
fn sync_dir(dir: &std::path::Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

fn classify(e: &serde_json::Error) -> &'static str {
    use serde_json::error::Category;
    match e.classify() {
        Category::Io => "unreadable",
        Category::Syntax => "not valid JSON",
        Category::Data => "JSON of the wrong shape",
        Category::Eof => "cut short",
    }
}
