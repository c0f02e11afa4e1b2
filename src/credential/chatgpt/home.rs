//! keyward's home: where the login and its lock live. Private to keyward's user, or refused.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use crate::config::values;
use crate::secret::private_file::{self, PrivateError};

#[derive(Debug, thiserror::Error)]
pub enum HomeError {
    #[error("{}", values::NO_HOME)]
    NoHome,
    #[error("{}: {what}", path.display())]
    Unsafe { path: PathBuf, what: String },
    #[error("{}: {error}", path.display())]
    Io { path: PathBuf, error: io::Error },
}

/// A checked, private home directory.
#[derive(Debug, Clone)]
pub struct Home {
    dir: PathBuf,
}

/// Held while a command changes the login; released on drop (or when the process dies).
#[derive(Debug)]
pub struct HomeLock {
    file: File,
}

impl Drop for HomeLock {
    fn drop(&mut self) {
        let _ = self.file.unlock();
    }
}

impl Home {
    /// `--home`, else `$KEYWARD_HOME`, else `~/.keyward`.
    pub fn resolve(flag: Option<&Path>) -> Result<PathBuf, HomeError> {
        values::home_dir(flag).ok_or(HomeError::NoHome)
    }

    /// Creates the directory (mode 0700) if missing, and refuses it if another user owns it or can
    /// read or write it.
    pub fn open(dir: &Path) -> Result<Self, HomeError> {
        let io_err = |error| HomeError::Io {
            path: dir.to_owned(),
            error,
        };
        match fs::metadata(dir) {
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(io_err)?;
            }
            Err(err) => return Err(io_err(err)),
            Ok(meta) if !meta.is_dir() => {
                return Err(HomeError::Unsafe {
                    path: dir.to_owned(),
                    what: "is not a directory".into(),
                });
            }
            Ok(_) => {}
        }
        check_private(dir, true)?;
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The home of the login named `name`: this home for the default login (where it has always
    /// been), else `logins/NAME` in it, created private like the home. Each login has its own
    /// file, lock and plan usage there.
    pub fn login(&self, name: &str) -> Result<Home, HomeError> {
        if name == values::DEFAULT_LOGIN {
            return Ok(self.clone());
        }
        let parsed = values::parse_login_name(name).map_err(|what| HomeError::Unsafe {
            path: self.dir.clone(),
            what,
        })?;
        Home::open(&values::login_dir(&self.dir, &parsed))
    }

    /// The names of the logins kept in this home's files: the default one if it has a login
    /// file, then every `logins/NAME` directory, by name.
    pub fn login_names(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.dir.join(values::LOGINS_DIR))
            .into_iter()
            .flatten()
            .filter_map(|entry| {
                let entry = entry.ok()?;
                let name = entry.file_name().into_string().ok()?;
                let is_dir = entry.file_type().ok()?.is_dir();
                (is_dir && values::parse_login_name(&name).is_ok()).then_some(name)
            })
            .collect();
        names.sort();
        if self.login_file().exists() {
            names.insert(0, values::DEFAULT_LOGIN.to_owned());
        }
        names
    }

    pub fn login_file(&self) -> PathBuf {
        self.dir.join("login.json")
    }

    /// Takes the home's lock, waiting for another keyward process to release it.
    pub fn lock(&self) -> Result<HomeLock, HomeError> {
        let path = self.dir.join("lock");
        let file = private_file::lock_file(&path).map_err(|error| HomeError::Io { path, error })?;
        Ok(HomeLock { file })
    }

    /// [`Home::lock`] without blocking the async runtime.
    pub async fn lock_async(&self) -> Result<HomeLock, HomeError> {
        let home = self.clone();
        tokio::task::spawn_blocking(move || home.lock())
            .await
            .map_err(|e| HomeError::Io {
                path: self.dir.clone(),
                error: io::Error::other(e),
            })?
    }
}

impl From<PrivateError> for HomeError {
    fn from(err: PrivateError) -> Self {
        match err {
            PrivateError::Unsafe { path, what } => HomeError::Unsafe { path, what },
            PrivateError::Io { path, error } => HomeError::Io { path, error },
        }
    }
}

/// Refuses `path` if it is not owned by keyward's user or if group or others have any access.
pub fn check_private(path: &Path, is_dir: bool) -> Result<(), HomeError> {
    Ok(private_file::check(path, is_dir)?)
}
