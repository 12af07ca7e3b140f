//! `/keys` is listed a page at a time: a million keys are never held at
//! once (as names they would take about 100 MB of the daemon's memory).
//!
//! A listing's offsets are positions. The pages read last are kept (a
//! few), so a `readdir` at an offset inside a kept page is answered from
//! it, and one at the offset just past a kept page continues after that
//! page's last key: a range scan in the index, not a count from the start.
//! The first key (offset 2) always starts a fresh listing. Any other offset
//! (a `seekdir` to a position no longer kept) counts keys from the start.
//!
//! Keys come in ascending order and a continuation starts strictly after
//! the previous page's last key, so one pass over the directory never
//! shows a key twice and never skips a key that was there throughout; a
//! key added or removed during the pass may or may not appear, as in any
//! live directory.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use super::error::FsError;
use super::node::{KeyPage, KEY_PAGE};
use super::view::StoreView;
use crate::hash::Digest;

/// Pages kept for continuations (64 × 32 KB): enough for concurrent
/// listings and a reader one page behind.
const KEPT: usize = 64;

#[derive(Default)]
pub struct KeyPages(Mutex<Vec<(Arc<KeyPage>, Instant)>>);

enum Start {
    First,
    After(Digest),
    Count,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl KeyPages {
    /// The page holding key position `index` (0 = the first key). An
    /// empty page means the listing ends before `index`.
    pub fn page(&self, view: &dyn StoreView, index: usize) -> Result<Arc<KeyPage>, FsError> {
        let start = {
            let mut kept = lock(&self.0);
            if index > 0 {
                if let Some((p, used)) = kept
                    .iter_mut()
                    .find(|(p, _)| p.base <= index && index < p.base + p.keys.len())
                {
                    *used = Instant::now();
                    return Ok(p.clone());
                }
            }
            let before = kept
                .iter()
                .find(|(p, _)| p.base + p.keys.len() == index)
                .and_then(|(p, _)| p.keys.last().copied());
            match (index, before) {
                (0, _) => Start::First,
                (_, Some(last)) => Start::After(last),
                (_, None) => Start::Count,
            }
        };
        let after = match start {
            Start::First => None,
            Start::After(k) => Some(k),
            Start::Count => match key_at(view, index - 1)? {
                Some(k) => Some(k),
                None => {
                    return Ok(Arc::new(KeyPage {
                        base: index,
                        keys: Vec::new(),
                    }))
                }
            },
        };
        let page = Arc::new(KeyPage {
            base: index,
            keys: view.keys_after(after.as_ref(), KEY_PAGE)?,
        });
        let mut kept = lock(&self.0);
        if kept.len() >= KEPT {
            if let Some(oldest) = (0..kept.len()).min_by_key(|&i| kept[i].1) {
                kept.swap_remove(oldest);
            }
        }
        kept.push((page.clone(), Instant::now()));
        Ok(page)
    }
}

/// The key at position `n`, counted from the first (None if fewer).
fn key_at(view: &dyn StoreView, n: usize) -> Result<Option<Digest>, FsError> {
    let (mut after, mut seen) = (None, 0usize);
    loop {
        let keys = view.keys_after(after.as_ref(), KEY_PAGE)?;
        if keys.is_empty() {
            return Ok(None);
        }
        if n < seen + keys.len() {
            return Ok(Some(keys[n - seen]));
        }
        seen += keys.len();
        after = keys.last().copied();
    }
}
