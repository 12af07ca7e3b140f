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
//! How: after fork, before exec (`Prepared::enter`, async-signal-safe:
//! everything it needs is prepared before the fork), the child unshares
//! (`CLONE_NEWNS | CLONE_NEWPID`, and `CLONE_NEWUSER` with its own uid
//! and gid mapped to themselves when not root), makes every mount private,
//! binds the store onto itself, binds each writable directory onto itself,
//! remounts the store's bind read-only (the writable binds are mounts of
//! their own, so they stay writable), then forks: the grandchild, PID 1 of
//! the new namespace, mounts its own `/proc` and goes on to exec the shell; the child closes every
//! other descriptor (the spawner's exec-error pipe among them) and waits
//! for it, exiting with its status (`128 + signal` if it was killed).
//!
//! Where the kernel refuses (no user namespaces for a normal user, a
//! container without `CAP_SYS_ADMIN`), tasks run as before, in their own
//! process group, killed with it when the shell exits: `status()` says
//! which, and why. The first task to run probes it once per process.
//! `DAGFS_ISOLATION=off` turns it off.
//!
//! May call: `libc`, `nix` (statvfs, ids, errno), `tempfile` (the probe's
//! directory); nothing else of the crate. Owns nothing on disk.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

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
    let mut cmd = std::process::Command::new("/bin/sh");
    cmd.arg("-c").arg(script);
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    prepared.install(&mut cmd);
    match cmd.output() {
        Ok(o) if o.status.success() && w.join("ok").exists() => {
            if user {
                Status::User
            } else {
                Status::Root
            }
        }
        Ok(o) => Status::Off(format!(
            "the kernel refused namespaces ({})",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Status::Off(format!("the kernel refused namespaces ({e})")),
    }
}

/// Everything the child needs, made before the fork.
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

impl Prepared {
    pub(crate) fn new(
        iso: &Isolation,
        user: bool,
        observer: Option<&super::hermetic::Observer>,
    ) -> std::io::Result<Prepared> {
        // NB: absolute and resolved: the child has already changed to the
        // task's working directory when it mounts.
        let store = std::fs::canonicalize(&iso.store)?;
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
                    let t = std::fs::canonicalize(t)?;
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
                .map(|w| cstr(&std::fs::canonicalize(w)?))
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

    /// Run `cmd` isolated.
    pub(crate) fn install(self, cmd: &mut std::process::Command) {
        use std::os::unix::process::CommandExt;
        // SAFETY: `enter` makes only async-signal-safe calls (raw
        // syscalls) and allocates nothing.
        unsafe {
            cmd.pre_exec(move || self.enter());
        }
    }

    /// In the forked child, before exec. See the module doc. Each step
    /// below makes only raw syscalls (async-signal-safe, no allocation).
    fn enter(&self) -> std::io::Result<()> {
        let mut flags = libc::CLONE_NEWNS | libc::CLONE_NEWPID;
        if self.user.is_some() {
            flags |= libc::CLONE_NEWUSER;
        }
        // SAFETY: a raw syscall.
        if unsafe { libc::unshare(flags) } != 0 {
            return last_error();
        }
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
        become_pid1()
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

/// Fork PID 1 of the new PID namespace's child: the child mounts its own
/// /proc (so that pids a task sees, `$!` and `ps`, and /proc agree; best
/// effort: a kernel that refuses leaves the host's) and returns to exec the
/// shell; this process waits for it and exits with its status.
fn become_pid1() -> std::io::Result<()> {
    // SAFETY: raw syscalls; after fork the parent only waits and exits.
    match unsafe { libc::fork() } {
        -1 => last_error(),
        0 => {
            // Killed with this process: a timeout or an output limit kills
            // the task's process group, and a shell that left it (`exec
            // setsid …`) would otherwise live on as PID 1, keeping its
            // whole namespace running and writing into a work directory
            // the next task reuses. NB: no race with that kill: it comes
            // only after the spawn returned, i.e. after this exec'd.
            unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
            unsafe {
                libc::mount(
                    c"proc".as_ptr(),
                    c"/proc".as_ptr(),
                    c"proc".as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                    std::ptr::null(),
                )
            };
            Ok(())
        }
        pid => {
            // The spawner waits for its exec-error pipe to close: this
            // process never execs, so it lets go of every descriptor.
            close_from(3);
            let mut st = 0;
            loop {
                let r = unsafe { libc::waitpid(pid, &mut st, 0) };
                if r == pid {
                    break;
                }
                if r < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                    unsafe { libc::_exit(127) };
                }
            }
            let code = if libc::WIFEXITED(st) {
                libc::WEXITSTATUS(st)
            } else {
                128 + libc::WTERMSIG(st)
            };
            unsafe { libc::_exit(code) }
        }
    }
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

/// Close every descriptor from `first` on.
fn close_from(first: u32) {
    // SAFETY: close_range takes two numbers and flags; closing our own
    // descriptors in a process that will only wait and exit.
    let r = unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, 0) };
    if r != 0 {
        for fd in first as i32..4096 {
            // SAFETY: as above, one descriptor at a time.
            unsafe { libc::close(fd) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_says_what_it_found() {
        let s = probe();
        eprintln!("isolation: {s:?}");
        if nix::unistd::geteuid().is_root() {
            assert_eq!(s, Status::Root, "root can unshare here");
        }
    }
}
