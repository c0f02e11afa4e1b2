//! A store in memory, for tests and embedding.

use parking_lot::Mutex;

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
        Ok(self.login.lock().clone())
    }

    fn save(&self, login: &Login) -> Result<(), StoreError> {
        *self.login.lock() = Some(login.clone());
        Ok(())
    }

    fn delete(&self) -> Result<bool, StoreError> {
        Ok(self.login.lock().take().is_some())
    }

    fn describe(&self) -> String {
        "memory".into()
    }
}
