//! Task isolation: each task's shell runs as PID 1 of its own PID namespace
//! and in its own mount namespace, where the whole store is read-only but
//! for the task's own `$DAGFS_OUT` and `$TMPDIR`.
//!
//! What that gives (issue 13 of the tracker):
//! - No process a task started outlives it: when its shell (the
//!   namespace's init) exits, the kernel kills every process left in the
//!   namespace, `setsid` or double fork included, and the shell's exit is
//!   seen only once they are gone. So ingest never publishes a file some
//!   process could still write.
//! - A task cannot write the store: not its blobs, packs, entries or index
//!   (`$DAGFS_OUT/../../..` leads to a read-only mount), not the shared,
//!   verified copies of its inputs (`$DAGFS_IN`, `$DAGFS_INPUTS`), not
//!   another task's output. Root included: a read-only mount is EROFS to
//!   every user.
//!
//! How (`Prepared::spawn`): a `clone` makes the task's leader process in
//! a new mount namespace (and a new user namespace, with the user's own uid
//! and gid mapped to themselves, when not root). It sets its descriptors,
//! its own process group and its directory, makes every mount private,
//! binds the store onto itself, binds each writable directory onto itself,
//! and remounts the store's bind read-only (the writable binds are mounts
//! of their own, so they stay writable). Then a second `clone` makes PID 1
//! of a new PID namespace, which mounts its own `/proc` and execs the
//! shell. The leader reports, closes every descriptor but its report pipe
//! and waits for PID 1; once PID 1 is reaped (every process of its
//! namespace is gone by then) it sends PID 1's status down the pipe and
//! exits with it (`128 + signal` if it was killed). The runner goes on at
//! that status: the leader's own exit, which tears its namespaces down
//! (an RCU grace period), is reaped by a background thread.
//!
//! Both share the spawner's memory (`CLONE_VM`, as `posix_spawn` does, and
//! `CLONE_VFORK` for PID 1 until it execs): no fork copies the large dagfs
//! process, its page tables or, afterwards, its pages on write. So
//! everything they need is made before the first clone, they allocate
//! nothing and make only raw syscalls (async-signal-safe), and every
//! signal stays blocked until PID 1's exec. The leader, not the shell,
//! leads the task's process group: a shell that runs `exec setsid …` is
//! not a group leader, so `setsid` does not fork and leave PID 1 to exit.
//! PID 1 dies with the leader, and the leader with the thread that started
//! it (`PR_SET_PDEATHSIG`): a timeout or an output limit kills the leader
//! by pid and the group, and so the whole namespace, even a shell that left
//! the group.
//!
//! Where the kernel refuses (no user namespaces for a normal user, a
//! container without `CAP_SYS_ADMIN`), tasks run as before, in their own
//! process group, killed with it when the shell exits: `status()` says
//! which, and why. The first task to run probes it once per process.
//! `DAGFS_ISOLATION=off` turns it off.
//!
//! May call: `libc`, `nix` (statvfs, ids, errno), `tempfile` (the probe's
//! directory), `hermetic` (the child's side of the observer); nothing else
//! of the crate. Owns nothing on disk.

use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

mod spawn;
pub(crate) use spawn::{Exec, Spawned};

/// What a task may and may not write.
#[derive(Debug, Clone)]
pub struct Isolation {
    /// Read-only to the task.
    pub store: PathBuf,
    /// Directories under `store` the task may write (its output, its
    /// temporary directory). They must exist.
    pub writable: Vec<PathBuf>,
    /// (snapshot, host path): each declared input's snapshot, mounted
    /// read-only over the host path it was taken of, so a task reading its
    /// inputs in place reads exactly what its key names (an edit during the
    /// run is not seen, and the task cannot write them). Best effort: a
    /// host path that vanished is left as it is.
    pub in_place: Vec<(PathBuf, PathBuf)>,
    /// The task's working directory (entered again after the mounts, which
    /// may cover it).
    pub cwd: PathBuf,
    /// Observe the task's opens (`hermetic`) under these trees (the
    /// pipeline directory first); None: do not.
    pub observe: Option<Vec<PathBuf>>,
}

/// Whether tasks run isolated in this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// As root: PID and mount namespaces.
    Root,
    /// As a normal user, inside a user namespace.
    User,
    /// Not isolated, and why.
    Off(String),
}

static STATUS: OnceLock<Status> = OnceLock::new();

/// How tasks run in this process (probed once, at the first call).
pub fn status() -> &'static Status {
    STATUS.get_or_init(probe)
}

/// The probed status, if a task has run (so asking costs nothing).
pub fn probed() -> Option<&'static Status> {
    STATUS.get()
}

fn probe() -> Status {
    if std::env::var_os("DAGFS_ISOLATION").is_some_and(|v| v == "off") {
        return Status::Off("DAGFS_ISOLATION=off".into());
    }
    let user = !nix::unistd::geteuid().is_root();
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => return Status::Off(format!("no temporary directory to probe in: {e}")),
    };
    let w = dir.path().join("w");
    if let Err(e) = std::fs::create_dir(&w) {
        return Status::Off(format!("{}: {e}", w.display()));
    }
    let iso = Isolation {
        store: dir.path().to_path_buf(),
        writable: vec![w.clone()],
        in_place: Vec::new(),
        cwd: dir.path().to_path_buf(),
        observe: None,
    };
    let prepared = match Prepared::new(&iso, user, None) {
        Ok(p) => p,
        Err(e) => return Status::Off(e.to_string()),
    };
    // The probe checks what a task relies on: its writable directory is,
    // the rest of the store is not, and it runs as PID 1.
    let script = format!(
        "[ $$ = 1 ] && : > '{w}/ok' && ! (: > '{d}/no') 2>/dev/null",
        w = w.display(),
        d = dir.path().display()
    );
    let run = || -> std::io::Result<(bool, String)> {
        let null = std::fs::File::options()
            .read(true)
            .write(true)
            .open("/dev/null")?;
        let err_path = dir.path().join("err");
        let err = std::fs::File::create(&err_path)?;
        let env: Vec<(String, String)> = std::env::var("PATH")
            .map(|p| vec![("PATH".to_string(), p)])
            .unwrap_or_default();
        let n = null.as_raw_fd();
        let exec = Exec::new(
            "/bin/sh",
            &["-c", &script],
            &env,
            dir.path(),
            [n, n, err.as_raw_fd()],
        )?;
        let status = prepared.spawn(&exec)?.wait()?;
        let said = std::fs::read_to_string(&err_path).unwrap_or_default();
        Ok((status.success(), said))
    };
    match run() {
        Ok((true, _)) if w.join("ok").exists() => {
            if user {
                Status::User
            } else {
                Status::Root
            }
        }
        Ok((_, said)) => Status::Off(format!("the kernel refused namespaces ({})", said.trim())),
        Err(e) => Status::Off(format!("the kernel refused namespaces ({e})")),
    }
}

/// Everything the child needs, made before the clone.
pub(crate) struct Prepared {
    store: CString,
    writable: Vec<CString>,
    /// The store mount's flags that a remount must keep (locked in a user
    /// namespace).
    keep: libc::c_ulong,
    /// For a user namespace: the uid_map and gid_map lines.
    user: Option<(Vec<u8>, Vec<u8>)>,
    /// (source, target, flags to keep) of each input mounted in place.
    in_place: Vec<(CString, CString, libc::c_ulong)>,
    cwd: CString,
    /// Trees bound onto themselves and marked (`hermetic`), and where the
    /// marks go; None: not observed.
    scopes: Vec<CString>,
    watch: Option<super::hermetic::ChildSide>,
    /// Each marked mount's host path, by tag: the scopes, then the inputs
    /// mounted in place.
    watched: Vec<super::hermetic::Watched>,
}

fn cstr(p: &Path) -> std::io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other(format!("{}: NUL in path", p.display())))
}

/// `canonicalize`, remembered by this thread: a worker isolates every task
/// with the same store, pipeline directory and its own output and
/// temporary directories, and resolving them (a `readlink` per component,
/// some 30 a task) was 5% of a cold run of trivial tasks. A worker lives
/// for one run: a `hermetic_scope` tree replaced by a symlink during a run
/// is seen by its next run.
fn resolved(p: &Path) -> std::io::Result<PathBuf> {
    thread_local! {
        static RESOLVED: std::cell::RefCell<std::collections::HashMap<PathBuf, PathBuf>> =
            Default::default();
    }
    if let Some(r) = RESOLVED.with(|m| m.borrow().get(p).cloned()) {
        return Ok(r);
    }
    let r = std::fs::canonicalize(p)?;
    RESOLVED.with(|m| {
        let mut m = m.borrow_mut();
        // NB: bounded: a long-lived thread asking for many paths.
        if m.len() >= 64 {
            m.clear();
        }
        m.insert(p.to_path_buf(), r.clone());
    });
    Ok(r)
}

impl Prepared {
    pub(crate) fn new(
        iso: &Isolation,
        user: bool,
        observer: Option<&super::hermetic::Observer>,
    ) -> std::io::Result<Prepared> {
        // NB: absolute and resolved: the child has already changed to the
        // task's working directory when it mounts.
        let store = resolved(&iso.store)?;
        let keep = kept_flags(&store)?;
        let mut in_place = Vec::new();
        for (src, dst) in &iso.in_place {
            use std::os::unix::fs::PermissionsExt;
            // NB: an input that vanished since it was hashed stays vanished;
            // an executable file stays the host's (a file input's snapshot
            // keeps no mode, and a script run in place must stay runnable).
            let Ok(md) = std::fs::metadata(dst) else {
                continue;
            };
            if md.is_file() && md.permissions().mode() & 0o111 != 0 {
                continue;
            }
            if let (Ok(src), Ok(dst)) = (std::fs::canonicalize(src), std::fs::canonicalize(dst)) {
                in_place.push((cstr(&src)?, cstr(&dst)?, kept_flags(&src)?));
            }
        }
        let mut scopes = Vec::new();
        let mut watched = Vec::new();
        let watch = match (observer, &iso.observe) {
            (Some(o), Some(trees)) => {
                for t in trees {
                    let t = resolved(t)?;
                    scopes.push(cstr(&t)?);
                    watched.push(super::hermetic::Watched { at: t });
                }
                for (_, dst, _) in &in_place {
                    watched.push(super::hermetic::Watched {
                        at: PathBuf::from(std::ffi::OsStr::from_bytes(dst.as_bytes())),
                    });
                }
                Some(o.child_side())
            }
            _ => None,
        };
        let user = user.then(|| {
            let uid = nix::unistd::geteuid().as_raw();
            let gid = nix::unistd::getegid().as_raw();
            (
                format!("{uid} {uid} 1").into_bytes(),
                format!("{gid} {gid} 1").into_bytes(),
            )
        });
        Ok(Prepared {
            store: cstr(&store)?,
            writable: iso
                .writable
                .iter()
                .map(|w| cstr(&resolved(w)?))
                .collect::<std::io::Result<_>>()?,
            keep,
            user,
            in_place,
            cwd: cstr(&iso.cwd)?,
            scopes,
            watch,
            watched,
        })
    }

    /// Each marked mount's host path, by tag (empty: not observed).
    pub(crate) fn watched(&self) -> Vec<super::hermetic::Watched> {
        self.watched.clone()
    }

    /// In the cloned child, already in its new namespaces: the id maps of
    /// a user namespace, then the mounts (see the module doc).
    fn enter(&self) -> std::io::Result<()> {
        if let Some((uid_map, gid_map)) = &self.user {
            write_id_maps(uid_map, gid_map)?;
        }
        if !raw_mount(
            std::ptr::null(),
            c"/".as_ptr(),
            libc::MS_REC | libc::MS_PRIVATE,
        ) {
            return last_error();
        }
        // Observed trees first: the store's mounts, made next, sit on top
        // of them, so the task's own directories are never marked.
        let watch = self.observe_scopes();
        self.mount_store()?;
        self.mount_inputs_in_place(watch);
        // SAFETY: a raw syscall on a NUL-terminated string owned by `self`.
        if (!self.in_place.is_empty() || self.watch.is_some())
            && unsafe { libc::chdir(self.cwd.as_ptr()) } != 0
        {
            return last_error();
        }
        Ok(())
    }

    /// Bind each observed tree onto itself and mark it. A tree that cannot
    /// be bound or marked ends the watching, not the task: the parent is
    /// told (`ChildSide::give_up`) and says so. Returns the marks' side if
    /// watching goes on.
    fn observe_scopes(&self) -> Option<super::hermetic::ChildSide> {
        let w = self.watch?;
        for (tag, s) in self.scopes.iter().enumerate() {
            let bound = raw_mount(s.as_ptr(), s.as_ptr(), libc::MS_BIND | libc::MS_REC);
            if !bound || w.mark(s, tag as u32).is_err() {
                w.give_up();
                return None;
            }
        }
        Some(w)
    }

    /// The store read-only, but for the task's writable directories (its
    /// output, its temporary directory).
    fn mount_store(&self) -> std::io::Result<()> {
        let store = self.store.as_ptr();
        if !raw_mount(store, store, libc::MS_BIND | libc::MS_REC) {
            return last_error();
        }
        for w in &self.writable {
            if !raw_mount(w.as_ptr(), w.as_ptr(), libc::MS_BIND) {
                return last_error();
            }
        }
        let ro = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | self.keep;
        if !raw_mount(std::ptr::null(), store, ro) {
            return last_error();
        }
        Ok(())
    }

    /// Each input's snapshot read-only over its host path, marked when
    /// watched. Best effort, as the module doc says; the remount makes sure
    /// the snapshot is read-only whatever it was mounted from.
    fn mount_inputs_in_place(&self, mut watch: Option<super::hermetic::ChildSide>) {
        for (i, (src, dst, keep)) in self.in_place.iter().enumerate() {
            if !raw_mount(src.as_ptr(), dst.as_ptr(), libc::MS_BIND | libc::MS_REC) {
                continue;
            }
            let ro = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | keep;
            raw_mount(std::ptr::null(), dst.as_ptr(), ro);
            if let Some(w) = watch {
                if w.mark(dst, (self.scopes.len() + i) as u32).is_err() {
                    w.give_up();
                    watch = None;
                }
            }
        }
    }
}

/// The errno of the call that just failed (std reports only the errno to
/// the spawner).
fn last_error() -> std::io::Result<()> {
    Err(std::io::Error::last_os_error())
}

/// `mount(2)` without a filesystem type or data; true on success.
fn raw_mount(src: *const libc::c_char, dst: *const libc::c_char, flags: libc::c_ulong) -> bool {
    // SAFETY: a raw syscall on NUL-terminated strings (or null) the caller
    // keeps alive for the call.
    unsafe { libc::mount(src, dst, std::ptr::null(), flags, std::ptr::null()) == 0 }
}

/// A new user namespace's maps: `setgroups` denied, then one line each.
fn write_id_maps(uid_map: &[u8], gid_map: &[u8]) -> std::io::Result<()> {
    for (file, line) in [
        (c"/proc/self/setgroups", &b"deny"[..]),
        (c"/proc/self/uid_map", uid_map),
        (c"/proc/self/gid_map", gid_map),
    ] {
        // SAFETY: raw syscalls on a NUL-terminated path and a borrowed buffer.
        let fd = unsafe { libc::open(file.as_ptr(), libc::O_WRONLY) };
        if fd < 0 {
            return last_error();
        }
        let n = unsafe { libc::write(fd, line.as_ptr().cast(), line.len()) };
        unsafe { libc::close(fd) };
        if n != line.len() as isize {
            return last_error();
        }
    }
    Ok(())
}

/// The mount flags of `p`'s filesystem that a remount of a bind of it must
/// keep (they are locked in a user namespace).
fn kept_flags(p: &Path) -> std::io::Result<libc::c_ulong> {
    use nix::sys::statvfs::FsFlags as F;
    let f = nix::sys::statvfs::statvfs(p)
        .map_err(std::io::Error::from)?
        .flags();
    let mut keep = 0;
    for (st, ms) in [
        (F::ST_NOSUID, libc::MS_NOSUID),
        (F::ST_NODEV, libc::MS_NODEV),
        (F::ST_NOEXEC, libc::MS_NOEXEC),
        (F::ST_NOATIME, libc::MS_NOATIME),
        (F::ST_NODIRATIME, libc::MS_NODIRATIME),
        (F::ST_RELATIME, libc::MS_RELATIME),
    ] {
        if f.contains(st) {
            keep |= ms;
        }
    }
    Ok(keep)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A task's spawn in `dir` (the store), writing `writable`, with
    /// /dev/null for its stdio; None where tasks are not isolated.
    fn spawn_in(
        dir: &Path,
        writable: Vec<PathBuf>,
        program: &str,
        args: &[&str],
    ) -> Option<std::io::Result<Spawned>> {
        if matches!(status(), Status::Off(_)) {
            eprintln!("skipped: not isolated here");
            return None;
        }
        let iso = Isolation {
            store: dir.to_path_buf(),
            writable,
            in_place: Vec::new(),
            cwd: dir.to_path_buf(),
            observe: None,
        };
        let p = Prepared::new(&iso, *status() == Status::User, None).unwrap();
        let null = std::fs::File::options()
            .read(true)
            .write(true)
            .open("/dev/null")
            .unwrap();
        let n = null.as_raw_fd();
        let exec = Exec::new(program, args, &[], dir, [n, n, n]).unwrap();
        Some(p.spawn(&exec))
    }

    /// A task's status comes from its leader before the leader exits, and
    /// is kept; the leader then exits with it, and that is kept too.
    #[test]
    fn a_tasks_status_is_sent_then_kept() {
        let dir = tempfile::tempdir().unwrap();
        let w = dir.path().join("w");
        std::fs::create_dir(&w).unwrap();
        let Some(child) = spawn_in(dir.path(), vec![w], "/bin/sh", &["-c", "exit 3"]) else {
            return;
        };
        let mut child = child.unwrap();
        assert_eq!(child.wait_task().unwrap().code(), Some(3));
        assert_eq!(child.wait_task().unwrap().code(), Some(3));
        assert_eq!(child.wait().unwrap().code(), Some(3));
        assert_eq!(child.wait().unwrap().code(), Some(3));
    }

    /// A program that cannot be exec'd is an error of the spawn, naming why.
    #[test]
    fn an_exec_failure_is_the_spawns_error() {
        let dir = tempfile::tempdir().unwrap();
        let Some(spawned) = spawn_in(dir.path(), Vec::new(), "/no/such/sh", &[]) else {
            return;
        };
        let e = spawned.err().expect("no such program");
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "{e}");
    }

    #[test]
    fn probe_says_what_it_found() {
        let s = probe();
        eprintln!("isolation: {s:?}");
        if nix::unistd::geteuid().is_root() {
            assert_eq!(s, Status::Root, "root can unshare here");
        }
    }
}
