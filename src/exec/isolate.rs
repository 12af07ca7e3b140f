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
//! shell. The leader reports, closes every descriptor and waits for PID 1,
//! exiting with its status (`128 + signal` if it was killed).
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
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
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

    /// Start `exec` isolated (see the module doc): a leader process, in
    /// new mount (and user) namespaces, clones PID 1 of a new PID
    /// namespace, which execs. Both share this process's memory (no copy
    /// of it is made). On return PID 1 has exec'd; an error from any step
    /// before is returned here, both processes reaped.
    pub(crate) fn spawn(&self, exec: &Exec) -> std::io::Result<Spawned> {
        let mut flags = libc::CLONE_VM | libc::CLONE_NEWNS | libc::SIGCHLD;
        if self.user.is_some() {
            flags |= libc::CLONE_NEWUSER;
        }
        let argv = nul_terminated(&exec.argv);
        let envp = nul_terminated(&exec.envp);
        let (report_r, report_w) = pipe()?;
        let leader_stack = Stack::new(Stack::LEADER)?;
        let init_stack = Stack::new(Stack::INIT)?;
        let child = Child {
            prepared: self,
            exec,
            argv: argv.as_ptr(),
            envp: envp.as_ptr(),
            errno: AtomicI32::new(0),
            report: report_w.as_raw_fd(),
            init_stack: init_stack.top(),
            parent: std::process::id() as libc::pid_t,
        };
        // NB: every signal blocked across the clone: the children share
        // this memory, and no handler may run in it. They reset their
        // handlers; PID 1 unblocks only just before exec, the leader never.
        // SAFETY: sigset_t is plain data; sigfillset/pthread_sigmask write
        // only the sets given.
        let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
        let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
        unsafe {
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old);
        }
        // SAFETY: `leader_main` gets `child`, which outlives its use: the
        // leader reads it only until it reports on `report`, and this
        // thread waits for that report (or for the pipe to close) below.
        // Its stack is kept until it is reaped (`Spawned`).
        let pid = unsafe {
            libc::clone(
                leader_main,
                leader_stack.top(),
                flags,
                std::ptr::addr_of!(child) as *mut libc::c_void,
            )
        };
        let clone_error = std::io::Error::last_os_error();
        // SAFETY: restores this thread's mask saved above.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
        drop(report_w);
        if pid < 0 {
            return Err(clone_error);
        }
        let mut spawned = Spawned {
            pid,
            status: None,
            _stack: leader_stack,
        };
        // The leader's report: 0 once PID 1 has exec'd, else the errno of
        // the step that failed; nothing if it died.
        let mut buf = [0u8; 4];
        let mut f = std::fs::File::from(report_r);
        let got = loop {
            match std::io::Read::read(&mut f, &mut buf) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                r => break r,
            }
        };
        let n = match got {
            Ok(n) => n,
            Err(e) => {
                // Cannot happen (a pipe read fails only with EINTR, retried);
                // but then PID 1 may still be before its exec, reading this
                // frame and running on `init_stack`: wait until the task is
                // over (the leader exits after PID 1) before returning.
                let _ = spawned.wait();
                return Err(e);
            }
        };
        drop(init_stack);
        match n {
            4 if buf == [0; 4] => Ok(spawned),
            4 => {
                let _ = spawned.wait();
                Err(std::io::Error::from_raw_os_error(i32::from_le_bytes(buf)))
            }
            _ => {
                let _ = spawned.wait();
                Err(std::io::Error::other(
                    "the task's process died before it could start",
                ))
            }
        }
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

/// The program `Prepared::spawn` execs, made before the clone.
pub(crate) struct Exec {
    path: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
    cwd: CString,
    /// Its stdin, stdout and stderr: descriptors the caller keeps open
    /// until the spawn returns.
    stdio: [RawFd; 3],
}

impl Exec {
    /// `path` with `args` (after `path` itself as `argv[0]`), exactly the
    /// environment `env`, in `cwd`.
    pub(crate) fn new(
        path: &str,
        args: &[&str],
        env: &[(String, String)],
        cwd: &Path,
        stdio: [RawFd; 3],
    ) -> std::io::Result<Exec> {
        let c = |s: &[u8]| {
            CString::new(s).map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "nul byte found in provided data",
                )
            })
        };
        let mut argv = vec![c(path.as_bytes())?];
        for a in args {
            argv.push(c(a.as_bytes())?);
        }
        let envp = env
            .iter()
            .map(|(k, v)| c(format!("{k}={v}").as_bytes()))
            .collect::<std::io::Result<_>>()?;
        Ok(Exec {
            path: c(path.as_bytes())?,
            argv,
            envp,
            cwd: cstr(cwd)?,
            stdio,
        })
    }
}

/// The pointers of `v`'s strings, then a null.
fn nul_terminated(v: &[CString]) -> Vec<*const libc::c_char> {
    v.iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// An isolated task, as `Prepared::spawn` started it: its leader process
/// (its pid is the task's process group id), which waits for PID 1 and
/// exits with its status. Dropped unreaped (an error path), it is killed
/// (PID 1 with it) and reaped.
pub(crate) struct Spawned {
    pid: libc::pid_t,
    /// Its status, once reaped (as std's `Child` keeps it).
    status: Option<std::process::ExitStatus>,
    /// The leader runs on it until it exits.
    _stack: Stack,
}

impl Spawned {
    pub(crate) fn id(&self) -> u32 {
        self.pid as u32
    }

    /// Its status if it has exited (reaping it), else None; never waits.
    pub(crate) fn try_wait(&mut self) -> std::io::Result<Option<std::process::ExitStatus>> {
        self.reap(libc::WNOHANG)
    }

    /// Wait for it to exit and reap it.
    pub(crate) fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        loop {
            if let Some(s) = self.reap(0)? {
                return Ok(s);
            }
        }
    }

    fn reap(&mut self, flags: libc::c_int) -> std::io::Result<Option<std::process::ExitStatus>> {
        use std::os::unix::process::ExitStatusExt;
        if let Some(s) = self.status {
            return Ok(Some(s));
        }
        let mut st = 0;
        loop {
            // SAFETY: waits for our own child; writes only `st`.
            let r = unsafe { libc::waitpid(self.pid, &mut st, flags) };
            if r == self.pid {
                let s = std::process::ExitStatus::from_raw(st);
                self.status = Some(s);
                return Ok(Some(s));
            }
            if r == 0 {
                return Ok(None);
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        // NB: before `_stack` is unmapped: the leader runs on it.
        if self.status.is_none() {
            // SAFETY: our own unreaped child: its pid cannot be anyone else's.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
            let _ = self.wait();
        }
    }
}

/// The child's stack: mapped for each spawn, with a guard page below it.
struct Stack {
    base: *mut libc::c_void,
    len: usize,
}

impl Stack {
    /// The leader's stack (it makes the mounts), and PID 1's.
    const LEADER: usize = 256 << 10;
    const INIT: usize = 64 << 10;

    fn new(len: usize) -> std::io::Result<Stack> {
        // SAFETY: a fresh anonymous mapping, owned by the `Stack`.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let stack = Stack { base, len };
        // SAFETY: the lowest page of the mapping just made.
        if unsafe { libc::mprotect(base, 4096, libc::PROT_NONE) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(stack)
    }

    fn top(&self) -> *mut libc::c_void {
        // SAFETY: one past the end of the mapping (the stack grows down).
        unsafe { self.base.cast::<u8>().add(self.len).cast() }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: the mapping `new` made; the child no longer runs on it.
        unsafe { libc::munmap(self.base, self.len) };
    }
}

/// What the two cloned processes read: everything made before the clone.
struct Child<'a> {
    prepared: &'a Prepared,
    exec: &'a Exec,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    /// The errno of PID 1's step that failed, for the leader (shared memory).
    errno: AtomicI32,
    /// The pipe the leader reports on (see `Prepared::spawn`).
    report: RawFd,
    /// PID 1's stack.
    init_stack: *mut libc::c_void,
    /// The pid of the process that spawns (the leader's parent).
    parent: libc::pid_t,
}

/// The leader: its process group, descriptors, directory and namespaces,
/// then PID 1; reports, lets go of every descriptor and waits for PID 1,
/// exiting with its status (`128 + signal` if it was killed).
extern "C" fn leader_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the parent's `Child`, alive until the report below.
    let c = unsafe { &*(arg as *const Child<'_>) };
    let (init, errno) = match c.lead() {
        Ok(pid) => (pid, 0),
        Err(e) => (0, e.raw_os_error().unwrap_or(libc::EINVAL).max(1)),
    };
    if errno == 0 {
        // The parent's other spawns wait for their exec-error pipes to
        // close: this process never execs, so it lets go of every
        // descriptor but the report's. NB: before the report: this process
        // shares the spawning thread's `errno` (its TLS), and a failing
        // call would write it; after the report that thread runs again,
        // and what is left (close, waitpid, _exit) cannot fail here.
        close_from_except(3, c.report);
    }
    let rec = errno.to_le_bytes();
    // SAFETY: raw writes of a local buffer. NB: `c` is not touched after
    // the write: the parent may return (and free it) as soon as it reads.
    let report = c.report;
    unsafe {
        libc::write(report, rec.as_ptr().cast(), rec.len());
        libc::close(report);
    }
    if errno != 0 {
        unsafe { libc::_exit(127) };
    }
    let mut st = 0;
    loop {
        // SAFETY: waits for its own child; writes only a local.
        let r = unsafe { libc::waitpid(init, &mut st, libc::__WALL) };
        if r == init {
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

/// PID 1 of the new PID namespace: its own /proc, then exec.
extern "C" fn init_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the parent's `Child`, alive until this process has
    // exec'd or exited (the leader waits: CLONE_VFORK; the parent waits
    // for the leader's report).
    let c = unsafe { &*(arg as *const Child<'_>) };
    // Killed with the leader: a timeout or an output limit kills the
    // task's process group, and a shell that left it (`exec setsid …`)
    // would otherwise live on as PID 1, keeping its whole namespace
    // running and writing into a work directory the next task reuses.
    // NB: no race with that kill: it comes only after the spawn returned,
    // i.e. after this exec'd.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    // Its own /proc, so that pids a task sees, `$!` and `ps`, and /proc
    // agree (best effort: a kernel that refuses leaves the host's).
    unsafe {
        libc::mount(
            c"proc".as_ptr(),
            c"/proc".as_ptr(),
            c"proc".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            std::ptr::null(),
        )
    };
    // SAFETY: an empty set, as std gives every process it spawns; then
    // NUL-terminated strings and null-terminated arrays the parent keeps.
    let mut none: libc::sigset_t = unsafe { std::mem::zeroed() };
    unsafe {
        libc::sigemptyset(&mut none);
        libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        libc::execve(c.exec.path.as_ptr(), c.argv, c.envp);
    }
    let e = std::io::Error::last_os_error();
    c.errno.store(
        e.raw_os_error().unwrap_or(libc::EINVAL).max(1),
        Ordering::SeqCst,
    );
    // SAFETY: ends this process only.
    unsafe { libc::_exit(127) }
}

impl Child<'_> {
    /// The leader's work, up to PID 1's exec: its pid. Each step makes
    /// only raw syscalls (async-signal-safe, no allocation): this process
    /// shares the parent's memory.
    fn lead(&self) -> std::io::Result<libc::pid_t> {
        reset_signal_handlers();
        for (to, &fd) in self.exec.stdio.iter().enumerate() {
            let to = to as libc::c_int;
            // SAFETY: raw syscalls on descriptors the parent keeps open.
            let r = if fd == to {
                unsafe { libc::fcntl(fd, libc::F_SETFD, 0) }
            } else {
                unsafe { libc::dup2(fd, to) }
            };
            if r < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        // SAFETY: raw syscalls on NUL-terminated strings owned by `exec`.
        if unsafe { libc::setpgid(0, 0) } != 0
            || unsafe { libc::chdir(self.exec.cwd.as_ptr()) } != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        // Killed with the thread that started it: a task never outlives
        // the dagfs that runs it. NB: dagfs may have exited just before.
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
        if unsafe { libc::getppid() } != self.parent {
            return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
        }
        self.prepared.enter()?;
        // SAFETY: `init_main` gets `self` (see there), on its own stack.
        let pid = unsafe {
            libc::clone(
                init_main,
                self.init_stack,
                libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_NEWPID | libc::SIGCHLD,
                (self as *const Child<'_>) as *mut libc::c_void,
            )
        };
        if pid < 0 {
            return Err(std::io::Error::last_os_error());
        }
        match self.errno.load(Ordering::SeqCst) {
            0 => Ok(pid),
            e => {
                let mut st = 0;
                // SAFETY: reaps its own child, which has exited.
                unsafe { libc::waitpid(pid, &mut st, libc::__WALL) };
                Err(std::io::Error::from_raw_os_error(e))
            }
        }
    }
}

/// A pipe, both ends close-on-exec: (read, write).
fn pipe() -> std::io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    use std::os::fd::FromRawFd;
    let mut p = [0; 2];
    // SAFETY: pipe2 writes two new descriptors, which we then own.
    if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(p[0]),
            std::os::fd::OwnedFd::from_raw_fd(p[1]),
        )
    })
}

/// Close every descriptor from `first` on, but `keep`.
fn close_from_except(first: u32, keep: RawFd) {
    let keep = keep as u32;
    let ranges = [
        (first, keep.saturating_sub(1)),
        (keep.saturating_add(1), u32::MAX),
    ];
    for (lo, hi) in ranges {
        if lo > hi {
            continue;
        }
        // SAFETY: close_range takes two numbers and flags; closing our own
        // descriptors in a process that will only wait and exit.
        let r = unsafe { libc::syscall(libc::SYS_close_range, lo, hi, 0) };
        if r != 0 {
            for fd in lo..=hi.min(4095) {
                // SAFETY: as above, one descriptor at a time.
                unsafe { libc::close(fd as i32) };
            }
        }
    }
}

/// Every caught signal back to its default (none may run in the memory the
/// child shares), and SIGPIPE too (Rust's runtime ignores it; a shell's
/// pipelines need it), as std does for the processes it spawns.
fn reset_signal_handlers() {
    for sig in 1..65 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: sigaction on plain data; an invalid number just fails.
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        if unsafe { libc::sigaction(sig, std::ptr::null(), &mut old) } != 0 {
            continue;
        }
        let h = old.sa_sigaction;
        if (h != libc::SIG_DFL && h != libc::SIG_IGN)
            || (sig == libc::SIGPIPE && h == libc::SIG_IGN)
        {
            let mut dfl: libc::sigaction = unsafe { std::mem::zeroed() };
            dfl.sa_sigaction = libc::SIG_DFL;
            unsafe { libc::sigaction(sig, &dfl, std::ptr::null_mut()) };
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A task's status is kept once reaped: the runner's fallback without
    /// pidfd reaps through `try_wait`, then asks `wait` again.
    #[test]
    fn a_reaped_status_is_kept() {
        if matches!(status(), Status::Off(_)) {
            eprintln!("skipped: not isolated here");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let w = dir.path().join("w");
        std::fs::create_dir(&w).unwrap();
        let iso = Isolation {
            store: dir.path().to_path_buf(),
            writable: vec![w],
            in_place: Vec::new(),
            cwd: dir.path().to_path_buf(),
            observe: None,
        };
        let user = *status() == Status::User;
        let p = Prepared::new(&iso, user, None).unwrap();
        let null = std::fs::File::options()
            .read(true)
            .write(true)
            .open("/dev/null")
            .unwrap();
        let n = null.as_raw_fd();
        let exec = Exec::new("/bin/sh", &["-c", "exit 3"], &[], dir.path(), [n, n, n]).unwrap();
        let mut child = p.spawn(&exec).unwrap();
        let first = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        assert_eq!(first.code(), Some(3));
        assert_eq!(child.wait().unwrap().code(), Some(3));
    }

    /// A program that cannot be exec'd is an error of the spawn, naming why.
    #[test]
    fn an_exec_failure_is_the_spawns_error() {
        if matches!(status(), Status::Off(_)) {
            eprintln!("skipped: not isolated here");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let iso = Isolation {
            store: dir.path().to_path_buf(),
            writable: Vec::new(),
            in_place: Vec::new(),
            cwd: dir.path().to_path_buf(),
            observe: None,
        };
        let user = *status() == Status::User;
        let p = Prepared::new(&iso, user, None).unwrap();
        let null = std::fs::File::options()
            .read(true)
            .write(true)
            .open("/dev/null")
            .unwrap();
        let n = null.as_raw_fd();
        let exec = Exec::new("/no/such/sh", &[], &[], dir.path(), [n, n, n]).unwrap();
        let e = p.spawn(&exec).err().expect("no such program");
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
