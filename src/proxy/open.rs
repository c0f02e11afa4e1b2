//! A count of things open (connections, WebSockets) that shutdown can wait for.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

#[derive(Clone, Default)]
pub struct OpenCount(Arc<(AtomicUsize, Notify)>);

/// One open thing, counted until dropped.
pub struct Counted(OpenCount);

impl OpenCount {
    pub fn enter(&self) -> Counted {
        self.0.0.fetch_add(1, Ordering::AcqRel);
        Counted(self.clone())
    }

    /// How many are open now.
    pub fn count(&self) -> usize {
        self.0.0.load(Ordering::Acquire)
    }

    /// Returns once none is open.
    pub async fn all_closed(&self) {
        loop {
            let notified = self.0.1.notified();
            if self.count() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        if self.0.0.0.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.0.1.notify_waiters();
        }
    }
}
