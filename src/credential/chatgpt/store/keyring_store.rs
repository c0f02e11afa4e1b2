//! The OS keyring, through the `keyring` crate (on Linux: the kernel's keyutils, which keeps the
//! login until reboot). One entry per keyward home.

use zeroize::Zeroizing;

use super::{LoginStore, StoreError};
use crate::credential::chatgpt::home::Home;
use crate::credential::chatgpt::record::Login;

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
        self.entry.set_password(&json).map_err(|e| {
            StoreError::Keyring(format!(
                "could not store the login ({e}); on Linux the keyring needs a session keyring: \
                     sign in on a console or over SSH, use `keyctl session`, or use --store file"
            ))
        })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::SecretString;

    #[test]
    fn a_login_round_trips_through_the_keyring() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::open(&dir.path().join("h")).unwrap();
        let store = KeyringStore::new(&home).unwrap();
        let token = |claims: serde_json::Value| {
            SecretString::new(crate::credential::chatgpt::jwt::tests::make(&claims))
        };
        let auth = serde_json::json!({"https://api.openai.com/auth": {"chatgpt_account_id": "acct_k"}, "exp": 2_000_000_000});
        let login = Login::from_tokens(
            token(auth.clone()),
            token(auth),
            SecretString::new("rt-k".into()),
        )
        .unwrap();
        assert!(store.load().unwrap().is_none());
        store.save(&login).unwrap();
        let back = store.load().unwrap().unwrap();
        assert_eq!(back.refresh_token.expose(), "rt-k");
        assert_eq!(back.account_id, "acct_k");
        assert!(store.describe().contains("keyring"));
        assert!(store.delete().unwrap());
        assert!(store.load().unwrap().is_none());
        assert!(!store.delete().unwrap());
    }
}
