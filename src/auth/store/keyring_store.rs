//! The OS keyring, through the `keyring` crate (on Linux: the kernel's keyutils, which keeps the
//! login until reboot). One entry per keyward home.

use zeroize::Zeroizing;

use super::{LoginStore, StoreError};
use crate::auth::home::Home;
use crate::auth::record::Login;

pub struct KeyringStore {
    entry: keyring::Entry,
    user: String,
}

impl KeyringStore {
    pub fn new(home: &Home) -> Result<Self, StoreError> {
        let user = format!("login:{}", home.dir().display());
        let entry = keyring::Entry::new("keyward", &user)
            .map_err(|e| StoreError::Keyring(e.to_string()))?;
        Ok(Self { entry, user })
    }
}

impl LoginStore for KeyringStore {
    fn load(&self) -> Result<Option<Login>, StoreError> {
        match self.entry.get_password() {
            Ok(json) => {
                let json = Zeroizing::new(json);
                serde_json::from_str(&json)
                    .map(Some)
                    .map_err(|e| StoreError::Corrupt {
                        path: format!("keyring:keyward/{}", self.user).into(),
                        detail: format!("line {} column {}", e.line(), e.column()),
                    })
            }
            Err(keyring::Error::NoEntry) => Ok(None),
            Err(e) => Err(StoreError::Keyring(e.to_string())),
        }
    }

    fn save(&self, login: &Login) -> Result<(), StoreError> {
        let json = Zeroizing::new(
            serde_json::to_string(login).map_err(|e| StoreError::Keyring(e.to_string()))?,
        );
        self.entry
            .set_password(&json)
            .map_err(|e| StoreError::Keyring(e.to_string()))
    }

    fn delete(&self) -> Result<bool, StoreError> {
        match self.entry.delete_credential() {
            Ok(()) => Ok(true),
            Err(keyring::Error::NoEntry) => Ok(false),
            Err(e) => Err(StoreError::Keyring(e.to_string())),
        }
    }

    fn describe(&self) -> String {
        format!("OS keyring (service keyward, user {})", self.user)
    }
}
