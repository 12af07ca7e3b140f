//! Starting an isolated task (`Prepared::spawn`): the two `CLONE_VM`
//! processes the module doc of `isolate` describes, the leader and PID 1,
//! what they run between clone and exec, and `Spawned`, the handle the
//! runner waits on.
//!
//! May call: what `isolate` may (`libc`). Owns nothing on disk.

use std::ffi::CString;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};

use super::{cstr, Prepared};

impl Prepared {
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
            task_status: None,
            report: None,
            from_pid1: false,
            _stack: leader_stack,
        };
        // The leader's report: 0 once PID 1 has exec'd, else the errno of
        // the step that failed; nothing if it died.
        let mut buf = [0u8; 4];
        let mut f = std::fs::File::from(report_r);
        let got = read_record(&mut f, &mut buf);
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
        spawned.report = Some(f);
        drop(init_stack);
        match n {
            4 if buf == [0; 4] => Ok(spawned),
            4 => {
                let _ = spawned.wait();
                Err(std::io::Error::from_raw_os_error(i32::from_le_bytes(buf)))
            }
            _ => {
                // NB: the leader leads the task's process group, so a task
                // that kills its own group (`kill -9 0`) can kill it after
                // the exec, before it reports; or it was killed in setup.
                use std::os::unix::process::ExitStatusExt;
                let how = match spawned.wait() {
                    Ok(s) => s
                        .signal()
                        .map_or_else(|| s.to_string(), |n| format!("killed by signal {n}")),
                    Err(e) => e.to_string(),
                };
                Err(std::io::Error::other(format!(
                    "the task's process group leader died ({how}) before it reported the start; a task that kills its own process group (`kill -9 0`) ends this way"
                )))
            }
        }
    }
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
/// (its pid is the task's process group id), which waits for PID 1, sends
/// its status down the report pipe and exits. Dropped unreaped, it is
/// handed to a reaper thread (or, not finished, killed first, PID 1 with it).
pub(crate) struct Spawned {
    pid: libc::pid_t,
    /// The leader's status, once reaped (as std's `Child` keeps it).
    status: Option<std::process::ExitStatus>,
    /// PID 1's status, once the leader sent it.
    task_status: Option<std::process::ExitStatus>,
    /// The report pipe's read end: PID 1's status comes down it.
    report: Option<std::fs::File>,
    /// `task_status` came down the pipe (not from the leader's exit).
    from_pid1: bool,
    /// The leader runs on it until it exits.
    _stack: Stack,
}

// SAFETY: `Stack` only owns its mapping (no aliasing pointer is handed
// out but to the leader, which runs on it until reaped).
unsafe impl Send for Stack {}

impl Spawned {
    pub(crate) fn id(&self) -> u32 {
        self.pid as u32
    }

    /// A descriptor that becomes readable once the task is over (PID 1's
    /// status was sent, or the leader died): for `poll`.
    pub(crate) fn done_fd(&self) -> Option<RawFd> {
        self.report.as_ref().map(|f| f.as_raw_fd())
    }

    /// Whether PID 1's status came from the leader, which sends it only
    /// once PID 1 is reaped: every process of the task is gone.
    pub(crate) fn task_is_over(&self) -> bool {
        self.from_pid1
    }

    /// Wait for the task to be over and return its status: PID 1's, as
    /// soon as the leader has reaped it (every process of the namespace is
    /// gone then), without waiting for the leader's own exit; the leader's
    /// if it died first (killed: a timeout, an output limit).
    pub(crate) fn wait_task(&mut self) -> std::io::Result<std::process::ExitStatus> {
        use std::os::unix::process::ExitStatusExt;
        if let Some(s) = self.task_status {
            return Ok(s);
        }
        if let Some(mut f) = self.report.take() {
            let mut buf = [0u8; 4];
            if read_record(&mut f, &mut buf)? == 4 {
                let s = std::process::ExitStatus::from_raw(i32::from_le_bytes(buf));
                self.task_status = Some(s);
                self.from_pid1 = true;
                return Ok(s);
            }
        }
        let s = self.wait()?;
        self.task_status = Some(s);
        Ok(s)
    }

    /// Wait for the leader to exit and reap it.
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

/// Read one 4-byte record (or what there is before EOF), retrying EINTR.
fn read_record(f: &mut std::fs::File, buf: &mut [u8; 4]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match std::io::Read::read(f, &mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Leaders whose task is over, reaped off the task's path (their exit
/// tears their namespaces down, which waits for an RCU grace period).
fn reap_later(s: Spawned) {
    static REAPER: std::sync::OnceLock<Option<std::sync::Mutex<std::sync::mpsc::Sender<Spawned>>>> =
        std::sync::OnceLock::new();
    let tx = REAPER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Spawned>();
        std::thread::Builder::new()
            .name("dagfs-reaper".into())
            .spawn(move || rx.into_iter().for_each(settle))
            .ok()
            .map(|_| std::sync::Mutex::new(tx))
    });
    let unsent = match tx {
        Some(tx) => match tx.lock().unwrap_or_else(|p| p.into_inner()).send(s) {
            Ok(()) => None,
            Err(std::sync::mpsc::SendError(s)) => Some(s),
        },
        None => Some(s),
    };
    if let Some(s) = unsent {
        settle(s);
    }
}

/// Reap a leader. NB: should that fail (it cannot: nothing else reaps our
/// children), its stack is leaked rather than unmapped under a process
/// that may still run on it, and it is never waited for or killed again.
fn settle(mut s: Spawned) {
    use std::os::unix::process::ExitStatusExt;
    if s.wait().is_err() {
        std::mem::forget(std::mem::replace(&mut s._stack, Stack::empty()));
        s.status = Some(std::process::ExitStatus::from_raw(0));
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        // NB: the leader runs on `_stack` until it exits: it is unmapped
        // only once the leader is reaped.
        if self.status.is_some() {
            return;
        }
        if self.task_status.is_none() {
            // SAFETY: our own unreaped child: its pid cannot be anyone else's.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
        }
        let me = Spawned {
            pid: self.pid,
            status: None,
            task_status: self.task_status,
            report: self.report.take(),
            from_pid1: self.from_pid1,
            _stack: std::mem::replace(&mut self._stack, Stack::empty()),
        };
        reap_later(me);
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

    /// No mapping (what a `Spawned` handed to the reaper leaves behind).
    fn empty() -> Stack {
        Stack {
            base: std::ptr::null_mut(),
            len: 0,
        }
    }

    fn top(&self) -> *mut libc::c_void {
        // SAFETY: one past the end of the mapping (the stack grows down).
        unsafe { self.base.cast::<u8>().add(self.len).cast() }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if self.len == 0 {
            return;
        }
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
    // NB: from here on only raw syscalls (`raw`), and `c` is not touched:
    // as soon as the parent reads this record it may return (freeing `c`),
    // and the thread that spawned, whose TLS this process shares (glibc's
    // wrappers write `errno` and cancellation state there), may exit.
    let report = c.report;
    // SAFETY: raw syscalls on a descriptor of ours and local buffers.
    unsafe { raw::write(report, &rec) };
    if errno != 0 {
        unsafe { raw::exit(127) };
    }
    let mut st: libc::c_int = 0;
    loop {
        let r = unsafe { raw::wait(init, &mut st) };
        if r == init as isize {
            break;
        }
        if r != -(libc::EINTR as isize) {
            unsafe { raw::exit(127) };
        }
    }
    // PID 1 is reaped, so every process of its namespace is gone: its
    // status goes to the parent now, which need not wait for this
    // process's own exit (the namespaces' teardown, an RCU grace period).
    unsafe { raw::write(report, &st.to_le_bytes()) };
    let code = if libc::WIFEXITED(st) {
        libc::WEXITSTATUS(st)
    } else {
        128 + libc::WTERMSIG(st)
    };
    unsafe { raw::exit(code) }
}

/// The leader's last syscalls, made without libc (see `leader_main`).
/// Each returns what the kernel returned (`-errno` on failure).
mod raw {
    #[cfg(target_arch = "x86_64")]
    unsafe fn call4(n: libc::c_long, a: usize, b: usize, c: usize, d: usize) -> isize {
        let ret: isize;
        // SAFETY: the x86_64 Linux syscall convention; the kernel clobbers
        // only rcx and r11.
        unsafe {
            std::arch::asm!(
                "syscall",
                inlateout("rax") n as isize => ret,
                in("rdi") a, in("rsi") b, in("rdx") c, in("r10") d,
                lateout("rcx") _, lateout("r11") _,
                options(nostack),
            );
        }
        ret
    }

    #[cfg(target_arch = "aarch64")]
    unsafe fn call4(n: libc::c_long, a: usize, b: usize, c: usize, d: usize) -> isize {
        let ret: isize;
        // SAFETY: the aarch64 Linux syscall convention.
        unsafe {
            std::arch::asm!(
                "svc 0",
                in("x8") n,
                inlateout("x0") a as isize => ret,
                in("x1") b, in("x2") c, in("x3") d,
                options(nostack),
            );
        }
        ret
    }

    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    unsafe fn call4(n: libc::c_long, a: usize, b: usize, c: usize, d: usize) -> isize {
        // NB: libc's `syscall` writes errno on failure (elsewhere only).
        let r = unsafe { libc::syscall(n, a, b, c, d) } as isize;
        if r == -1 {
            -(std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO) as isize)
        } else {
            r
        }
    }

    pub(super) unsafe fn write(fd: libc::c_int, buf: &[u8]) -> isize {
        unsafe {
            call4(
                libc::SYS_write,
                fd as usize,
                buf.as_ptr() as usize,
                buf.len(),
                0,
            )
        }
    }

    pub(super) unsafe fn wait(pid: libc::pid_t, st: &mut libc::c_int) -> isize {
        let p = st as *mut libc::c_int as usize;
        unsafe { call4(libc::SYS_wait4, pid as usize, p, libc::__WALL as usize, 0) }
    }

    pub(super) unsafe fn exit(code: libc::c_int) -> ! {
        unsafe { call4(libc::SYS_exit_group, code as usize, 0, 0, 0) };
        unreachable_exit()
    }

    /// exit_group does not return.
    fn unreachable_exit() -> ! {
        loop {
            std::hint::spin_loop();
        }
    }
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
