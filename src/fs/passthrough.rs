//! How reads of stored files are served: FUSE passthrough (the kernel reads
//! the blob file itself) or `pread` in dagfs.
//!
//! Owns: the negotiated read path and the passthrough backing ids, one per
//! open inode. May call: `fuser` (`KernelConfig`, `ReplyOpen::open_backing`).
//! Guarantees:
//!
//! - Passthrough is requested at INIT only with `Passthrough::Auto` and only
//!   if the kernel offers it (Linux >= 6.9, CONFIG_FUSE_PASSTHROUGH); the
//!   outcome is logged once and shown in `/.dagfs/stats`.
//! - All opens of an inode share one backing id while any is open (the
//!   kernel refuses a second, different backing file for an open inode);
//!   the id is closed when its last open is released.
//! - The first backing file the kernel refuses (it needs CAP_SYS_ADMIN)
//!   turns passthrough off for new inodes, logged once; reads fall back to
//!   `pread`, never fail.
//! - Stack depth 2: the store may itself sit on a stacked fs (overlayfs in a
//!   container); the price is that dagfs cannot sit under one.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use fuser::{BackingId, InitFlags, KernelConfig, ReplyOpen};

use super::inode::{lock, Ino};
use super::Passthrough;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ReadPath {
    /// Before the kernel's INIT.
    Unknown = 0,
    Passthrough = 1,
    Off = 2,
    NotOffered = 3,
    Refused = 4,
}

impl ReadPath {
    fn from_u8(v: u8) -> ReadPath {
        match v {
            1 => ReadPath::Passthrough,
            2 => ReadPath::Off,
            3 => ReadPath::NotOffered,
            4 => ReadPath::Refused,
            _ => ReadPath::Unknown,
        }
    }
}

pub struct Reads {
    wanted: Passthrough,
    path: AtomicU8,
    refusal: OnceLock<String>,
    by_inode: Mutex<HashMap<u64, Weak<BackingId>>>,
}

impl Reads {
    pub fn new(wanted: Passthrough) -> Reads {
        Reads {
            wanted,
            path: AtomicU8::new(ReadPath::Unknown as u8),
            refusal: OnceLock::new(),
            by_inode: Mutex::new(HashMap::new()),
        }
    }

    /// At INIT: ask the kernel for passthrough if wanted and offered.
    pub fn negotiate(&self, config: &mut KernelConfig) {
        let path = match self.wanted {
            Passthrough::Off => ReadPath::Off,
            Passthrough::Auto => match config.add_capabilities(InitFlags::FUSE_PASSTHROUGH) {
                Ok(()) if config.set_max_stack_depth(2).is_ok() => ReadPath::Passthrough,
                _ => ReadPath::NotOffered,
            },
        };
        self.path.store(path as u8, Ordering::Relaxed);
        eprintln!("dagfs: file reads use {}", self.describe());
    }

    pub fn path(&self) -> ReadPath {
        ReadPath::from_u8(self.path.load(Ordering::Relaxed))
    }

    /// One line for `/.dagfs/stats`.
    pub fn describe(&self) -> String {
        match self.path() {
            ReadPath::Unknown => "pread (not mounted yet)".into(),
            ReadPath::Passthrough => "passthrough (the kernel granted FUSE passthrough: \
                                      stored files are read straight from their blobs)"
                .into(),
            ReadPath::Off => "pread (passthrough turned off by option)".into(),
            ReadPath::NotOffered => "pread (the kernel does not offer FUSE passthrough: \
                                     it needs Linux >= 6.9 with CONFIG_FUSE_PASSTHROUGH)"
                .into(),
            ReadPath::Refused => format!(
                "pread (the kernel refused a passthrough backing file: {}; it needs CAP_SYS_ADMIN)",
                self.refusal.get().map_or("?", String::as_str)
            ),
        }
    }

    /// The backing id to open `ino` (whose blob is `file`) by passthrough,
    /// or None to read it by pread.
    pub fn backing_for(&self, ino: Ino, file: &File, reply: &ReplyOpen) -> Option<Arc<BackingId>> {
        // NB: hold the map across open_backing, so two racing opens of one
        // inode cannot register two different backing files.
        let mut map = lock(&self.by_inode);
        if let Some(b) = map.get(&ino.0).and_then(Weak::upgrade) {
            return Some(b);
        }
        if self.path() != ReadPath::Passthrough {
            return None;
        }
        match reply.open_backing(file) {
            Ok(id) => {
                let id = Arc::new(id);
                map.insert(ino.0, Arc::downgrade(&id));
                Some(id)
            }
            Err(e) => {
                self.refuse(e);
                None
            }
        }
    }

    /// After an open of `ino` was released (its handle, and with it its
    /// share of the backing id, already dropped).
    pub fn released(&self, ino: Ino) {
        let mut map = lock(&self.by_inode);
        if map.get(&ino.0).is_some_and(|w| w.strong_count() == 0) {
            map.remove(&ino.0);
        }
    }

    fn refuse(&self, e: io::Error) {
        let was = self.path.compare_exchange(
            ReadPath::Passthrough as u8,
            ReadPath::Refused as u8,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        if was.is_ok() {
            let _ = self.refusal.set(e.to_string());
            eprintln!("dagfs: file reads use {}", self.describe());
        }
    }
}
