//! Undeclared reads and writes (issue 13.5): while an isolated task runs,
//! record the host files it opens and the directories it lists under the
//! pipeline's directory (and each `hermetic_scope` tree), and name those it
//! did not declare.
//!
//! How (root): the task runs in its own mount namespace (`isolate`). There,
//! before the shell starts, each scope is bind-mounted onto itself and each
//! declared input's snapshot over its host path, and every one of those
//! mounts gets a fanotify *mount* mark, placed by the child in a group the
//! parent made before the clone: the worker thread's group, kept from task
//! to task (`Observer::for_task`; a worker runs one task at a time). A
//! mount mark sees every open through that mount and nothing else, and the
//! mounts exist only in the task's namespace: so what is counted is
//! exactly the task's opens (any process, thread or subprocess of it,
//! relative `openat`, a path through a symlink, a file later mapped with
//! mmap: each is an open of the file it lands on), and never those of a
//! concurrent task or of the host. An event is counted only if it came
//! through one of the current task's mounts, by mount id (a pending event,
//! and the descriptor it is read as, hold its mount, so an earlier task's
//! id cannot have been given to a new mount meanwhile); anything else in
//! the group (a late close of an earlier task, an open through
//! `/proc/<pid>/root`) is dropped. Once a task is drained its marks are
//! flushed; after a failure the thread's group is given up.
//!
//! Why one group per worker: destroying a group waits for the kernel's
//! mark reaper (an SRCU grace period, 2-30 ms here), and the last holder
//! of a group's descriptor pays it. A group per task was often last held by
//! *another* task's processes, which copy the descriptor table when they
//! are cloned (its exec closing it, `CLOEXEC`, or its leader's exit): with
//! two workers that made a cold run of 1,000 trivial tasks take twice as
//! long as with `hermetic = "off"`. `$DAGFS_OUT`,
//! `$TMPDIR`, `$DAGFS_IN` and `$DAGFS_INPUTS` live in the store, which is a
//! mount of its own, and system paths outside the scopes (the compiler,
//! `/usr/include`) are not marked: none of them is ever a finding.
//!
//! Each event carries a descriptor of the file opened: `statx` gives the
//! mount it was opened through (the child reports each mount's id down a
//! pipe as it makes it), `readlink` its path from that mount's root. An
//! open of a directory is a listing; a close after writing is a write.
//! Events are read by a thread while the task runs (the queue is unlimited,
//! so nothing is lost while it is busy) and drained once every process of
//! the task is gone, so the record is complete when it is classified.
//!
//! A normal user cannot place fanotify mount marks (the kernel asks for
//! `CAP_SYS_ADMIN` in the initial user namespace; tested up to 6.18), and
//! inode marks would see the whole host. There, and where tasks run
//! without isolation, reads are not observed: `unobservable()` says why, a
//! run says it once, and `hermetic = "strict"` refuses to vouch for a task
//! (it fails) rather than pass it unseen.
//!
//! May call: `libc`, `store::entry` (the findings' record); nothing else
//! of the crate. Owns nothing on
//! disk (its findings are stored in the entry by the scheduler).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// `hermetic = "warn" | "strict" | "off"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Report undeclared reads and writes; the run goes on.
    #[default]
    Warn,
    /// A task with any undeclared read or write fails, and nothing of it is
    /// cached.
    Strict,
    /// Do not look.
    Off,
}

impl Mode {
    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "warn" => Some(Mode::Warn),
            "strict" => Some(Mode::Strict),
            "off" => Some(Mode::Off),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Warn => "warn",
            Mode::Strict => "strict",
            Mode::Off => "off",
        }
    }
}

pub use crate::store::entry::Findings;

/// A task's check, as its job reports it.
#[derive(Debug, Clone)]
pub struct Checked {
    pub mode: Mode,
    /// What it did beyond its declaration; Err: why it could not be seen.
    pub findings: Result<Findings, String>,
}

/// At most this many paths are named in one line; the rest are counted.
const SHOWN: usize = 6;

fn list(paths: &[String]) -> String {
    let mut s = paths
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if paths.len() > SHOWN {
        s += &format!(" and {} more", paths.len() - SHOWN);
    }
    s
}

/// What to add to `inputs` to declare `paths`: a file alone as itself,
/// files sharing a directory as that directory (`include/`).
fn fix(paths: &[String]) -> String {
    let mut by_dir: BTreeMap<String, Vec<&String>> = BTreeMap::new();
    for p in paths {
        if p == "./" {
            by_dir.entry(String::new()).or_default().push(p);
            continue;
        }
        let t = p.trim_end_matches('/');
        let dir = match t.rfind('/') {
            Some(i) => t[..=i].to_string(),
            None => String::new(),
        };
        by_dir.entry(dir).or_default().push(p);
    }
    let mut add: Vec<String> = Vec::new();
    for (dir, ps) in by_dir {
        if ps.len() == 1 || dir.is_empty() {
            add.extend(ps.into_iter().map(|p| {
                if p == "./" {
                    ".".to_string()
                } else {
                    p.clone()
                }
            }));
        } else {
            add.push(dir);
        }
    }
    add.dedup();
    let quoted: Vec<String> = add.iter().take(SHOWN).map(|a| format!("{a:?}")).collect();
    let more = if add.len() > SHOWN { ", …" } else { "" };
    format!("add {}{more} to inputs", quoted.join(", "))
}

impl Findings {
    /// Any undeclared read, listing or write (what strict fails on).
    pub fn undeclared(&self) -> bool {
        !(self.read.is_empty() && self.listed.is_empty() && self.wrote.is_empty())
    }

    /// One sentence per kind of finding, naming `task` and the fix (no
    /// `warning:` prefix; the caller adds what fits).
    pub fn sentences(&self, task: &str) -> Vec<String> {
        let mut v = Vec::new();
        if !self.read.is_empty() {
            let (them, are) = if self.read.len() == 1 {
                ("it", "is")
            } else {
                ("them", "are")
            };
            v.push(format!(
                "task {task} read {}, which {are} not among its inputs; an edit to {them} will not re-run it ({})",
                list(&self.read),
                fix(&self.read)
            ));
        }
        if !self.listed.is_empty() {
            let (it, are) = if self.listed.len() == 1 {
                ("it", "is")
            } else {
                ("them", "are")
            };
            v.push(format!(
                "task {task} listed {}, which {are} not among its inputs; a file added to or removed from {it} will not re-run it ({})",
                list(&self.listed),
                fix(&self.listed)
            ));
        }
        if !self.wrote.is_empty() {
            v.push(format!(
                "task {task} wrote {} outside $DAGFS_OUT; that is not cached, and a task reading it is not keyed by it (write under $DAGFS_OUT, and let dependents read $DAGFS_IN)",
                list(&self.wrote)
            ));
        }
        v
    }

    /// The lines `explain` and `/why` show (empty: nothing to say).
    pub fn explain(&self) -> String {
        let mut o = String::new();
        for (label, paths) in [
            ("read, undeclared", &self.read),
            ("listed, undeclared", &self.listed),
            ("wrote, outside $DAGFS_OUT", &self.wrote),
            ("declared, never read", &self.unread),
        ] {
            for p in paths {
                o += &format!("  {label:<26} {p}\n");
            }
        }
        o
    }
}

/// Why this process cannot observe a task's reads, or None when it can.
/// `isolated_as_root`: tasks run isolated, as root (`isolate::Status::Root`).
/// Probed once: a group is made and marks a mount.
pub fn unobservable(isolated_as_root: bool) -> Option<String> {
    static PROBE: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    if !isolated_as_root {
        return Some("undeclared reads are observed only for isolated tasks run as root (fanotify mount marks need CAP_SYS_ADMIN)".into());
    }
    PROBE
        .get_or_init(|| {
            let o = match Observer::new() {
                Ok(o) => o,
                Err(e) => return Some(format!("fanotify refused: {e}")),
            };
            // NB: a mark on this namespace's root mount, gone with the group.
            let root = CString::new("/").unwrap_or_default();
            let side = o.child_side();
            // SAFETY: a valid descriptor and a NUL-terminated path.
            let r = unsafe {
                libc::fanotify_mark(
                    side.fan,
                    libc::FAN_MARK_ADD | libc::FAN_MARK_MOUNT,
                    MASK,
                    libc::AT_FDCWD,
                    root.as_ptr(),
                )
            };
            if r != 0 {
                return Some(format!(
                    "fanotify refused a mount mark: {}",
                    std::io::Error::last_os_error()
                ));
            }
            if let Err(e) = mount_id(libc::AT_FDCWD, root.as_ptr(), 0) {
                return Some(format!("statx gives no mount id: {e}"));
            }
            None
        })
        .clone()
}

/// Events a mount mark asks for.
const MASK: u64 = libc::FAN_OPEN | libc::FAN_ONDIR | libc::FAN_CLOSE_WRITE;

/// The child's half: what it marks and where it reports mount ids. Raw
/// descriptors (owned by the `Observer`, which outlives the spawn).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ChildSide {
    pub fan: RawFd,
    pub ids: RawFd,
}

impl ChildSide {
    /// In the cloned child (`isolate`): mark the mount at `path` (just made) and report
    /// its id as `(tag, id)`. Async-signal-safe: raw syscalls on buffers
    /// owned by the caller.
    pub(crate) fn mark(&self, path: &CString, tag: u32) -> std::io::Result<()> {
        // SAFETY: a valid descriptor and a NUL-terminated path.
        let r = unsafe {
            libc::fanotify_mark(
                self.fan,
                libc::FAN_MARK_ADD | libc::FAN_MARK_MOUNT,
                MASK,
                libc::AT_FDCWD,
                path.as_ptr(),
            )
        };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let id = mount_id(libc::AT_FDCWD, path.as_ptr(), 0)?;
        let mut rec = [0u8; 12];
        rec[..4].copy_from_slice(&tag.to_le_bytes());
        rec[4..].copy_from_slice(&id.to_le_bytes());
        // SAFETY: writing 12 bytes from a stack buffer; a pipe write this
        // small is atomic and fits its buffer.
        let n = unsafe { libc::write(self.ids, rec.as_ptr().cast(), rec.len()) };
        if n != rec.len() as isize {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

/// The tag a child writes when it could not watch (`ChildSide::give_up`),
/// followed by the errno.
const GAVE_UP: u32 = u32::MAX;

impl ChildSide {
    /// In the cloned child: a tree could not be bound or marked; tell the
    /// parent (with the errno) that the task goes unwatched.
    pub(crate) fn give_up(&self) {
        let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
        let mut rec = [0u8; 12];
        rec[..4].copy_from_slice(&GAVE_UP.to_le_bytes());
        rec[4..].copy_from_slice(&(errno as u64).to_le_bytes());
        // SAFETY: as in `mark`.
        unsafe { libc::write(self.ids, rec.as_ptr().cast(), rec.len()) };
    }
}

/// The mount id of `path` relative to `dirfd` (`AT_EMPTY_PATH` in `flags`:
/// of `dirfd` itself).
fn mount_id(dirfd: RawFd, path: *const libc::c_char, flags: i32) -> std::io::Result<u64> {
    mount_id_and_dir(dirfd, path, flags).map(|(id, _)| id)
}

/// `mount_id`, and whether it is a directory.
fn mount_id_and_dir(
    dirfd: RawFd,
    path: *const libc::c_char,
    flags: i32,
) -> std::io::Result<(u64, bool)> {
    // SAFETY: statx fills the zeroed struct we own.
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    let r = unsafe {
        libc::statx(
            dirfd,
            path,
            flags,
            libc::STATX_MNT_ID | libc::STATX_TYPE,
            &mut st,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if st.stx_mask & libc::STATX_MNT_ID == 0 {
        // NB: no allocation: this runs in a cloned child too.
        return Err(std::io::Error::from_raw_os_error(libc::ENOSYS));
    }
    let dir = u32::from(st.stx_mode) & libc::S_IFMT == libc::S_IFDIR;
    Ok((st.stx_mnt_id, dir))
}

/// The parent's half, made before the spawn: one fanotify group and the
/// pipe the child reports its mounts' ids down.
pub(crate) struct Observer {
    fan: Arc<OwnedFd>,
    ids_r: OwnedFd,
    ids_w: OwnedFd,
    /// `fan` is this thread's group (`for_task`).
    shared: bool,
}

thread_local! {
    /// This thread's fanotify group, kept from task to task (see the
    /// module's header); dropped after a failure, and with the thread.
    static GROUP: RefCell<Option<Arc<OwnedFd>>> = const { RefCell::new(None) };
}

fn new_group() -> std::io::Result<OwnedFd> {
    // SAFETY: a plain syscall returning a new descriptor, owned below.
    let fan = unsafe {
        libc::fanotify_init(
            libc::FAN_CLASS_NOTIF
                | libc::FAN_CLOEXEC
                | libc::FAN_NONBLOCK
                | libc::FAN_UNLIMITED_QUEUE,
            (libc::O_RDONLY | libc::O_LARGEFILE | libc::O_CLOEXEC) as u32,
        )
    };
    if fan < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: just made, ours.
    Ok(unsafe { OwnedFd::from_raw_fd(fan) })
}

/// What a task opened: (tag of the mount, path from its root) -> what it
/// did there (`SEEN_*` bits).
pub type Seen = BTreeMap<(u32, PathBuf), u8>;
pub const SEEN_OPEN: u8 = 1;
pub const SEEN_DIR: u8 = 2;
pub const SEEN_WRITE: u8 = 4;

impl Observer {
    /// An observer with a group of its own, closed when it is done (the
    /// probe, whose mark on `/` must never reach a task's group).
    pub(crate) fn new() -> std::io::Result<Observer> {
        Self::with_group(Arc::new(new_group()?), false)
    }

    /// An observer for one task on this thread, with the thread's group.
    pub(crate) fn for_task() -> std::io::Result<Observer> {
        let fan = GROUP.with(|g| -> std::io::Result<Arc<OwnedFd>> {
            let mut g = g.borrow_mut();
            if let Some(f) = &*g {
                return Ok(f.clone());
            }
            let f = Arc::new(new_group()?);
            *g = Some(f.clone());
            Ok(f)
        })?;
        Self::with_group(fan, true)
    }

    fn with_group(fan: Arc<OwnedFd>, shared: bool) -> std::io::Result<Observer> {
        let mut p = [0; 2];
        if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let (ids_r, ids_w) = unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) };
        Ok(Observer {
            fan,
            ids_r,
            ids_w,
            shared,
        })
    }

    pub(crate) fn child_side(&self) -> ChildSide {
        ChildSide {
            fan: self.fan.as_raw_fd(),
            ids: self.ids_w.as_raw_fd(),
        }
    }

    /// After the spawn (the child has made its mounts): read the mounts'
    /// ids and watch. The thread reads events until `Watching::finish`.
    pub(crate) fn start(self) -> std::io::Result<Watching> {
        let (fan, shared) = (self.fan.clone(), self.shared);
        let r = self.start_watching();
        if r.is_err() && shared {
            // NB: the child may have marked mounts before it gave up; their
            // events must not wait in the group for the next task.
            abandon(&fan);
        }
        r
    }

    fn start_watching(self) -> std::io::Result<Watching> {
        drop(self.ids_w);
        let mut mounts = BTreeMap::new();
        let mut f = std::fs::File::from(self.ids_r);
        let mut buf = Vec::new();
        // NB: non-blocking; the child wrote every record before the spawn
        // returned (before it closed its descriptors).
        let _ = std::io::Read::read_to_end(&mut f, &mut buf);
        for rec in buf.chunks_exact(12) {
            let tag = u32::from_le_bytes(rec[..4].try_into().unwrap_or_default());
            let id = u64::from_le_bytes(rec[4..].try_into().unwrap_or_default());
            if tag == GAVE_UP {
                return Err(std::io::Error::from_raw_os_error(id as i32));
            }
            mounts.insert(id, tag);
        }
        let mut p = [0; 2];
        if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let (stop_r, stop_w) = unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) };
        let fan = self.fan;
        let (reply, seen) = std::sync::mpsc::sync_channel(1);
        let group = fan.clone();
        hand_to_watcher(WatchRequest {
            fan,
            stop: stop_r,
            mounts,
            reply,
        })?;
        Ok(Watching {
            stop: Some(stop_w),
            seen,
            shared: self.shared,
            group,
            done: false,
        })
    }
}

/// One task's watch, for this thread's watcher.
struct WatchRequest {
    fan: Arc<OwnedFd>,
    stop: OwnedFd,
    mounts: BTreeMap<u64, u32>,
    reply: std::sync::mpsc::SyncSender<std::io::Result<Seen>>,
}

thread_local! {
    /// This thread's watcher thread, kept from task to task (as `GROUP`):
    /// a thread made and ended for each task cost 0.03-0.05 ms of it.
    /// It ends once this thread, and so its sender, is gone.
    static WATCHER: RefCell<Option<std::sync::mpsc::Sender<WatchRequest>>> =
        const { RefCell::new(None) };
}

/// Give `req` to this thread's watcher, made if there is none (or the one
/// there ended: a watch that panicked).
fn hand_to_watcher(req: WatchRequest) -> std::io::Result<()> {
    let req = match WATCHER.with(|w| w.borrow().clone()) {
        Some(tx) => match tx.send(req) {
            Ok(()) => return Ok(()),
            Err(std::sync::mpsc::SendError(req)) => req,
        },
        None => req,
    };
    let (tx, rx) = std::sync::mpsc::channel::<WatchRequest>();
    std::thread::Builder::new()
        .name("dagfs-hermetic".into())
        .spawn(move || {
            for r in rx {
                let _ = r.reply.send(watch(&r.fan, r.stop, &r.mounts));
            }
        })?;
    tx.send(req)
        .map_err(|_| std::io::Error::other("the hermetic watcher ended at once"))?;
    WATCHER.with(|w| *w.borrow_mut() = Some(tx));
    Ok(())
}

/// Give up this thread's group (a watch failed): remove its marks at once,
/// so nothing more is queued, and let the next task make a new one.
fn abandon(fan: &OwnedFd) {
    flush_marks(fan);
    GROUP.with(|g| g.borrow_mut().take());
}

/// Remove every mount mark of the group `fan` (its task is over).
fn flush_marks(fan: &OwnedFd) {
    // SAFETY: a valid descriptor; FLUSH takes no path.
    unsafe {
        libc::fanotify_mark(
            fan.as_raw_fd(),
            libc::FAN_MARK_FLUSH | libc::FAN_MARK_MOUNT,
            0,
            libc::AT_FDCWD,
            std::ptr::null(),
        )
    };
}

pub(crate) struct Watching {
    stop: Option<OwnedFd>,
    seen: std::sync::mpsc::Receiver<std::io::Result<Seen>>,
    /// The group is this thread's (`Observer::for_task`).
    shared: bool,
    group: Arc<OwnedFd>,
    done: bool,
}

impl Watching {
    /// Once every process of the task is gone: everything it opened. Then
    /// the task's marks are removed (its mounts are going; no late event
    /// reaches the group). A failure gives up the thread's group: the next
    /// task makes a new one.
    pub(crate) fn finish(mut self) -> std::io::Result<Seen> {
        drop(self.stop.take());
        let r = self
            .seen
            .recv()
            .unwrap_or_else(|_| Err(std::io::Error::other("the hermetic watcher panicked")));
        self.done = true;
        if self.shared {
            if r.is_err() {
                abandon(&self.group);
                // NB: and its watcher, which may be ending (a watch that
                // panicked): the next task's request must not reach it.
                WATCHER.with(|w| w.borrow_mut().take());
            } else {
                flush_marks(&self.group);
            }
        }
        r
    }
}

impl Drop for Watching {
    /// Dropped unfinished (the runner failed on the way): its watcher
    /// still reads the group, so this thread's next task gets a new one.
    fn drop(&mut self) {
        if !self.done && self.shared {
            GROUP.with(|g| g.borrow_mut().take());
        }
    }
}

/// The watcher thread: read events until `stop` closes, then drain.
fn watch(fan: &OwnedFd, stop: OwnedFd, mounts: &BTreeMap<u64, u32>) -> std::io::Result<Seen> {
    let mut seen = Seen::new();
    // Aligned for the event metadata.
    let mut buf = vec![0u64; 8192];
    loop {
        let mut fds = [
            libc::pollfd {
                fd: fan.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stop.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two valid pollfds.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        drain(fan, &mut buf, mounts, &mut seen)?;
        if fds[1].revents != 0 {
            // The task is gone: what is queued is all there is.
            drain(fan, &mut buf, mounts, &mut seen)?;
            return Ok(seen);
        }
    }
}

/// Read every queued event into `seen`.
fn drain(
    fan: &OwnedFd,
    buf: &mut [u64],
    mounts: &BTreeMap<u64, u32>,
    seen: &mut Seen,
) -> std::io::Result<()> {
    let meta = std::mem::size_of::<libc::fanotify_event_metadata>();
    loop {
        // SAFETY: reading into a buffer we own, of its size in bytes.
        let n = unsafe {
            libc::read(
                fan.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                std::mem::size_of_val(buf),
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EAGAIN) => Ok(()),
                Some(libc::EINTR) => continue,
                _ => Err(e),
            };
        }
        let n = n as usize;
        if n == 0 {
            return Ok(());
        }
        let bytes = buf.as_ptr().cast::<u8>();
        let mut off = 0;
        while off + meta <= n {
            // SAFETY: the kernel wrote whole records; `off` is at one, and
            // read_unaligned does not care about alignment.
            let m: libc::fanotify_event_metadata =
                unsafe { std::ptr::read_unaligned(bytes.add(off).cast()) };
            if (m.event_len as usize) < meta || off + m.event_len as usize > n {
                break;
            }
            off += m.event_len as usize;
            if m.mask & libc::FAN_Q_OVERFLOW != 0 {
                return Err(std::io::Error::other("the event queue overflowed"));
            }
            if m.fd < 0 {
                continue;
            }
            // SAFETY: the kernel gave us this descriptor; we own it now.
            let fd = unsafe { OwnedFd::from_raw_fd(m.fd) };
            // NB: the event's mask does not say whether a directory was
            // opened (FAN_ONDIR only selects): the file's type does.
            let Ok((id, dir)) = mount_id_and_dir(fd.as_raw_fd(), c"".as_ptr(), libc::AT_EMPTY_PATH)
            else {
                continue;
            };
            let Some(&tag) = mounts.get(&id) else {
                continue;
            };
            let Ok(path) = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())) else {
                continue;
            };
            let mut bits = 0;
            if m.mask & libc::FAN_OPEN != 0 {
                bits |= SEEN_OPEN;
            }
            if dir {
                bits |= SEEN_DIR;
            }
            if m.mask & libc::FAN_CLOSE_WRITE != 0 {
                bits |= SEEN_WRITE;
            }
            *seen.entry((tag, path)).or_default() |= bits;
        }
    }
}

/// What the runner saw of a task's opens.
#[derive(Debug, Clone, Default)]
pub enum Observed {
    /// The command did not ask (`hermetic = "off"`, or not a task).
    #[default]
    NotAsked,
    /// Everything it opened, and where each tag's mount sits.
    Seen { seen: Seen, mounts: Vec<Watched> },
    /// It asked, and this process cannot look: why.
    Unobservable(String),
}

/// One watched mount, by tag.
#[derive(Debug, Clone)]
pub struct Watched {
    /// The host path it is mounted at (absolute, resolved).
    pub at: PathBuf,
}

/// Sort what a task opened into findings. `mounts[tag]` is where each tag's
/// mount sits; `base` is the pipeline directory (resolved); `declared` the
/// task's inputs as written (relative to `base`).
pub fn classify(seen: &Seen, mounts: &[Watched], base: &Path, declared: &[String]) -> Findings {
    let declared: Vec<&str> = declared
        .iter()
        .map(|d| d.trim_end_matches('/'))
        .map(|d| if d == "." { "" } else { d })
        .collect();
    let covering = |rel: &str| -> Option<usize> {
        declared.iter().position(|d| {
            d.is_empty()
                || rel == *d
                || (rel.len() > d.len() && rel.starts_with(d) && rel.as_bytes()[d.len()] == b'/')
        })
    };
    let mut read = BTreeSet::new();
    let mut listed = BTreeSet::new();
    let mut wrote = BTreeSet::new();
    let mut used = vec![false; declared.len()];
    for ((tag, rel), bits) in seen {
        let Some(m) = mounts.get(*tag as usize) else {
            continue;
        };
        // NB: while the task's namespace lives, the kernel gives the path
        // as the task saw it (its root is a copy of the host's); once it is
        // gone, from the mount's root. Both occur: the watcher reads while
        // the task runs, and drains after.
        let host = if rel.starts_with(&m.at) {
            rel.clone()
        } else {
            let rel = rel.strip_prefix("/").unwrap_or(rel);
            if rel.as_os_str().is_empty() {
                m.at.clone()
            } else {
                m.at.join(rel)
            }
        };
        // NB: a path that is not valid UTF-8 is shown lossily.
        let (shown, inside) = match host.strip_prefix(base) {
            Ok(r) => (r.to_string_lossy().into_owned(), true),
            Err(_) => (host.to_string_lossy().into_owned(), false),
        };
        let is_dir = bits & SEEN_DIR != 0;
        if inside {
            if let Some(i) = covering(&shown) {
                used[i] = true;
                // A declared input is read-only in place but for an
                // executable file, which a task could still rewrite.
                if bits & SEEN_WRITE != 0 {
                    wrote.insert(shown);
                }
                continue;
            }
        }
        let shown = if is_dir {
            if shown.is_empty() {
                "./".to_string()
            } else {
                format!("{}/", shown.trim_end_matches('/'))
            }
        } else {
            shown
        };
        if bits & SEEN_WRITE != 0 {
            wrote.insert(shown);
        } else if is_dir {
            listed.insert(shown);
        } else {
            read.insert(shown);
        }
    }
    // A file the task wrote itself and read back is its own: the write is
    // the finding.
    read.retain(|r| !wrote.contains(r));
    let unread = declared
        .iter()
        .zip(&used)
        .filter(|(_, u)| !**u)
        .map(|(d, _)| {
            if d.is_empty() {
                ".".to_string()
            } else {
                d.to_string()
            }
        })
        .collect();
    Findings {
        read: read.into_iter().collect(),
        listed: listed.into_iter().collect(),
        wrote: wrote.into_iter().collect(),
        unread,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(items: &[(u32, &str, u8)]) -> Seen {
        items
            .iter()
            .map(|(t, p, b)| ((*t, PathBuf::from(p)), *b))
            .collect()
    }

    #[test]
    fn classify_names_undeclared_paths_and_unread_inputs() {
        let base = Path::new("/p");
        let mounts = vec![
            Watched { at: "/p".into() },
            Watched {
                at: "/p/src".into(),
            },
            Watched {
                at: "/opt/sdk".into(),
            },
        ];
        let s = seen(&[
            (1, "/a.c", SEEN_OPEN),                // declared dir, in place
            (0, "/include/ast.h", SEEN_OPEN),      // undeclared
            (0, "/include", SEEN_OPEN | SEEN_DIR), // listed
            (0, "/build/x.o", SEEN_OPEN | SEEN_WRITE),
            (2, "/lib/sdk.h", SEEN_OPEN),
            (0, "/", SEEN_OPEN | SEEN_DIR),
            // As seen while the namespace lived: the full path.
            (0, "/p/include/config.h", SEEN_OPEN),
            (1, "/p/src/b.c", SEEN_OPEN),
        ]);
        let f = classify(&s, &mounts, base, &["src/".into(), "README".into()]);
        assert_eq!(
            f.read,
            vec!["/opt/sdk/lib/sdk.h", "include/ast.h", "include/config.h"]
        );
        assert_eq!(f.listed, vec!["./", "include/"]);
        assert_eq!(f.wrote, vec!["build/x.o"]);
        assert_eq!(f.unread, vec!["README"]);
        assert!(f.undeclared());
        let lines = f.sentences("compile");
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(lines[0].starts_with("task compile read /opt/sdk/lib/sdk.h, include/ast.h, include/config.h, which are not among its inputs; an edit to them will not re-run it (add \"/opt/sdk/lib/sdk.h\", \"include/\" to inputs)"), "{lines:?}");
        assert!(
            lines[1].contains("listed ./, include/")
                && lines[1].contains("(add \".\", \"include/\" to inputs)"),
            "{lines:?}"
        );
        assert!(
            lines[2].starts_with("task compile wrote build/x.o outside $DAGFS_OUT"),
            "{lines:?}"
        );
    }

    #[test]
    fn fix_suggests_the_shared_directory() {
        assert_eq!(
            fix(&["include/ast.h".into(), "include/config.h".into()]),
            "add \"include/\" to inputs"
        );
        assert_eq!(fix(&["a.h".into()]), "add \"a.h\" to inputs");
    }

    #[test]
    fn modes_parse() {
        assert_eq!(Mode::parse("strict"), Some(Mode::Strict));
        assert_eq!(Mode::parse("loud"), None);
        assert_eq!(Mode::default(), Mode::Warn);
    }
}
