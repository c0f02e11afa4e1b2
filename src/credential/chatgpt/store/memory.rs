//! A store in memory, for tests and embedding.

use std::sync::Mutex;

use super::{LoginStore, StoreError};
use crate::credential::chatgpt::record::Login;

#[derive(Default)]
pub struct MemoryStore {
    login: Mutex<Option<Login>>,
}

impl MemoryStore {
    pub fn with(login: Login) -> Self {
        Self {
            login: Mutex::new(Some(login)),
        }
    }
}

impl LoginStore for MemoryStore {
    fn load(&self) -> Result<Option<Login>, StoreError> {
        Ok(self.login.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }

    fn save(&self, login: &Login) -> Result<(), StoreError> {
        *self.login.lock().unwrap_or_else(|p| p.into_inner()) = Some(login.clone());
        Ok(())
    }

    fn delete(&self) -> Result<bool, StoreError> {
        Ok(self
            .login
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .is_some())
    }

    fn describe(&self) -> String {
        "memory".into()
    }
}
