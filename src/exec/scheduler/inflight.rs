//! Keys executing now, shared by every run of one process (the daemon's
//! concurrent clients): an identical key runs once, the others join it.
//!
//! Guarantees: whoever claims a key publishes it (or fails) before
//! releasing the claim, so a claimant that then misses the cache really
//! must execute; every waiter is told the result exactly once.

use std::collections::HashMap;
use std::sync::Mutex;

use crossbeam::channel;

use super::Msg;
use crate::hash::Digest;

type Waiters = Vec<(channel::Sender<Msg>, usize)>;

/// Keys being executed, and who waits for each.
#[derive(Default)]
pub struct Inflight {
    map: Mutex<HashMap<Digest, Waiters>>,
}

impl Inflight {
    /// Claim `key` for execution (true), or register `idx` of the run behind
    /// `tx` as waiting for it (false).
    pub(super) fn claim(&self, key: Digest, tx: &channel::Sender<Msg>, idx: usize) -> bool {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        match m.entry(key) {
            std::collections::hash_map::Entry::Occupied(mut o) => {
                o.get_mut().push((tx.clone(), idx));
                false
            }
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(Vec::new());
                true
            }
        }
    }

    /// Release a claimed key, telling every waiter the result.
    pub(super) fn finish(&self, key: &Digest, result: Result<Digest, String>) {
        let waiters = self
            .map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key)
            .unwrap_or_default();
        for (tx, idx) in waiters {
            let _ = tx.send(Msg::Joined {
                idx,
                result: result.clone(),
            });
        }
    }

    pub(super) fn has_waiters(&self, key: &Digest) -> bool {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .is_some_and(|w| !w.is_empty())
    }

    /// Whether a run of this process holds `key` now (executing it, or
    /// asking the second tier for it).
    pub fn holds(&self, key: &Digest) -> bool {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(key)
    }

    /// Keys executing now.
    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
