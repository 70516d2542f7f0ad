//! The change feed of a store that lives in this process (the embedded one, the test
//! fake): recent committed changes kept in a bounded backlog, so a watch opened after a
//! snapshot misses nothing in between, and handed to every open watch.
//!
//! A watcher that falls more than the channel's bound behind is dropped (its feed ends
//! with `WatchLost`) rather than holding memory for it without limit.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::mpsc;

use super::{Revision, StoreError, Watch, WatchEvent};

/// Changes kept for watches opened at an older revision.
const BACKLOG: usize = 4096;
/// Changes a watcher may have unread before it is dropped.
const WATCHER_BOUND: usize = 16_384;

pub(crate) struct Journal {
    state: Mutex<State>,
}

struct State {
    /// Changes at or below this revision are not in the backlog (all of those before
    /// the journal was opened, and those it dropped for its bound).
    forgotten: Revision,
    backlog: VecDeque<WatchEvent>,
    watchers: Vec<mpsc::Sender<Result<WatchEvent, StoreError>>>,
}

impl Journal {
    pub(crate) fn new(revision: Revision) -> Self {
        Self {
            state: Mutex::new(State {
                forgotten: revision,
                backlog: VecDeque::new(),
                watchers: Vec::new(),
            }),
        }
    }

    /// Publishes the changes of one commit (all with its revision), in order.
    pub(crate) fn publish(&self, revision: Revision, events: Vec<WatchEvent>) {
        let mut state = self.lock();
        debug_assert!(events.iter().all(|e| e.revision == revision));
        for event in events {
            state
                .watchers
                .retain(|w| w.try_send(Ok(event.clone())).is_ok());
            if state.backlog.len() == BACKLOG {
                if let Some(dropped) = state.backlog.pop_front() {
                    state.forgotten = state.forgotten.max(dropped.revision);
                }
            }
            state.backlog.push_back(event);
        }
    }

    /// A feed of the changes after `after`: first those still in the backlog, then new
    /// ones. `WatchLost` when changes after `after` have already left the backlog.
    pub(crate) fn watch(&self, after: Revision) -> Result<Watch, StoreError> {
        let mut state = self.lock();
        if after < state.forgotten {
            return Err(StoreError::WatchLost);
        }
        let (tx, rx) = mpsc::channel(WATCHER_BOUND);
        for event in state.backlog.iter().filter(|e| e.revision > after) {
            if tx.try_send(Ok(event.clone())).is_err() {
                return Err(StoreError::WatchLost);
            }
        }
        state.watchers.push(tx);
        Ok(Watch::new(rx))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}
