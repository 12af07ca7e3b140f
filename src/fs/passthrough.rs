//! How reads of stored files are served: FUSE passthrough (the kernel reads
//! the blob file itself, set up by an open request per file) or `pread` in
//! dagfs into the kernel's page cache, without open requests.
//!
//! Owns: the negotiated read path and the passthrough backing ids, one per
//! open inode. May call: `fuser` (`KernelConfig`, `ReplyOpen::open_backing`).
//! Guarantees:
//!
//! - `Passthrough::Auto` and `Off` read by `pread` and answer the first
//!   `open` ENOSYS, so the kernel stops sending opens (where it supports
//!   that: it says so at INIT): an open costs no round trip to dagfs, and
//!   reads are served by inode, through the page cache (`keep_cache`).
//!   This is the faster path for anything but large files read once: see
//!   `scripts/bench-fuse` (passthrough reads a 1 GiB file at native speed,
//!   the page cache at about 0.8x warm, but every open round trip costs
//!   ~100 us, 4-6x the time of `cat` over many small files).
//! - `Passthrough::On` asks the kernel for passthrough at INIT (Linux >=
//!   6.9, CONFIG_FUSE_PASSTHROUGH); opens then reach dagfs, which hands the
//!   kernel the blob as backing file. The outcome is logged once and shown
//!   in `/.dagfs/stats`.
//! - All opens of an inode share one backing id while any is open (the
//!   kernel refuses a second, different backing file for an open inode);
//!   the id is closed when its last open is released.
//! - The first backing file the kernel refuses (it needs CAP_SYS_ADMIN)
//!   turns passthrough off, logged once; that open and later ones fall back
//!   to `pread` (the later ones without open requests), never fail.
//! - Stack depth 2: the store may itself sit on a stacked fs (overlayfs in a
//!   container); the price is that dagfs cannot sit under one.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
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
    /// `Passthrough::Off`.
    Off = 2,
    /// `Passthrough::On`, but the kernel does not offer passthrough.
    NotOffered = 3,
    /// `Passthrough::On`, but the kernel refused a backing file.
    Refused = 4,
    /// `Passthrough::Auto`: pread, no open requests.
    PageCache = 5,
}

impl ReadPath {
    fn from_u8(v: u8) -> ReadPath {
        match v {
            1 => ReadPath::Passthrough,
            2 => ReadPath::Off,
            3 => ReadPath::NotOffered,
            4 => ReadPath::Refused,
            5 => ReadPath::PageCache,
            _ => ReadPath::Unknown,
        }
    }
}

pub struct Reads {
    wanted: Passthrough,
    path: AtomicU8,
    /// The kernel can do without open requests for files (it said so at
    /// INIT), so opens are answered ENOSYS unless passthrough is on.
    no_open_ok: AtomicBool,
    refusal: OnceLock<String>,
    by_inode: Mutex<HashMap<u64, Weak<BackingId>>>,
}

impl Reads {
    pub fn new(wanted: Passthrough) -> Reads {
        Reads {
            wanted,
            path: AtomicU8::new(ReadPath::Unknown as u8),
            no_open_ok: AtomicBool::new(false),
            refusal: OnceLock::new(),
            by_inode: Mutex::new(HashMap::new()),
        }
    }

    /// At INIT: ask the kernel for passthrough if wanted and offered.
    pub fn negotiate(&self, config: &mut KernelConfig) {
        let no_open = config
            .capabilities()
            .contains(InitFlags::FUSE_NO_OPEN_SUPPORT);
        self.no_open_ok.store(no_open, Ordering::Relaxed);
        let path = match self.wanted {
            Passthrough::Off => ReadPath::Off,
            Passthrough::Auto => ReadPath::PageCache,
            Passthrough::On => match config.add_capabilities(InitFlags::FUSE_PASSTHROUGH) {
                Ok(()) if config.set_max_stack_depth(2).is_ok() => ReadPath::Passthrough,
                _ => ReadPath::NotOffered,
            },
        };
        self.path.store(path as u8, Ordering::Relaxed);
        log::info!("file reads use {}", self.describe());
    }

    pub fn path(&self) -> ReadPath {
        ReadPath::from_u8(self.path.load(Ordering::Relaxed))
    }

    /// Answer opens of files ENOSYS (the kernel then sends no more opens,
    /// and reads by inode): whenever passthrough is not in use and the
    /// kernel can do without opens.
    pub fn skip_opens(&self) -> bool {
        self.no_open_ok.load(Ordering::Relaxed) && self.path() != ReadPath::Passthrough
    }

    /// One line for `/.dagfs/stats`.
    pub fn describe(&self) -> String {
        let why = match self.path() {
            ReadPath::Unknown => return "pread (not mounted yet)".into(),
            ReadPath::Passthrough => {
                return "passthrough (the kernel granted FUSE passthrough: stored files are \
                        read straight from their blobs, at an open request per file)"
                    .into()
            }
            ReadPath::PageCache => "the default: passthrough costs an open request per file, \
                                    pays only for large files read once"
                .to_string(),
            ReadPath::Off => "passthrough turned off by option".to_string(),
            ReadPath::NotOffered => "the kernel does not offer FUSE passthrough: \
                                     it needs Linux >= 6.9 with CONFIG_FUSE_PASSTHROUGH"
                .to_string(),
            ReadPath::Refused => format!(
                "the kernel refused a passthrough backing file: {}; it needs CAP_SYS_ADMIN",
                self.refusal.get().map_or("?", String::as_str)
            ),
        };
        let how = if self.no_open_ok.load(Ordering::Relaxed) {
            "through the page cache, no open requests"
        } else {
            "through the page cache, an open request per file (the kernel needs them)"
        };
        format!("pread ({why}) {how}")
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
            log::info!("file reads use {}", self.describe());
        }
    }
}
