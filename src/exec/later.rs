//! Work a task's end need not wait for, done on one background thread:
//! reaping an isolated task's spawner process, whose exit tears down the
//! task's mount namespace (an expedited RCU grace period in the kernel's
//! `namespace_unlock`), and closing a task's fanotify group (closing it
//! waits for an SRCU grace period while its marks are destroyed). Each is
//! a millisecond or more of sleeping in the kernel per task, after the
//! task's result is known: a chain of trivial tasks spent most of its time
//! waiting on them.
//!
//! Bounded: a sender blocks once `BACKLOG` items wait, so descriptors and
//! zombies cannot pile up when tasks end faster than the kernel lets go of
//! them. The thread starts with the first item and lives as long as the
//! process; at exit, what is left is closed, and the zombies reaped by
//! init.
//!
//! May call: `crossbeam`; nothing else of the crate.

use std::os::fd::OwnedFd;
use std::sync::OnceLock;

use crossbeam::channel::{bounded, Sender};

const BACKLOG: usize = 64;

enum Item {
    Reap(std::process::Child),
    Close(OwnedFd),
}

fn queue() -> Option<&'static Sender<Item>> {
    static QUEUE: OnceLock<Option<Sender<Item>>> = OnceLock::new();
    QUEUE
        .get_or_init(|| {
            let (tx, rx) = bounded::<Item>(BACKLOG);
            std::thread::Builder::new()
                .name("dagfs-later".into())
                .spawn(move || {
                    for item in rx {
                        match item {
                            Item::Reap(mut c) => {
                                let _ = c.wait();
                            }
                            Item::Close(fd) => drop(fd),
                        }
                    }
                })
                .ok()
                .map(|_| tx)
        })
        .as_ref()
}

/// Wait for `child` (which has reported its result and is exiting) in the
/// background; without a background thread, here.
pub(crate) fn reap(child: std::process::Child) {
    let item = match queue() {
        Some(q) => match q.send(Item::Reap(child)) {
            Ok(()) => return,
            Err(e) => e.into_inner(),
        },
        None => Item::Reap(child),
    };
    if let Item::Reap(mut c) = item {
        let _ = c.wait();
    }
}

/// Close `fd` in the background; without a background thread, here.
pub(crate) fn close(fd: OwnedFd) {
    if let Some(q) = queue() {
        let _ = q.send(Item::Close(fd));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_handed_over_is_reaped() {
        let child = std::process::Command::new("/bin/true").spawn().unwrap();
        let pid = child.id();
        reap(child);
        // Reaped: gone from /proc (a zombie stays there until waited for).
        // NB: not waitpid here, which would reap it itself.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::path::Path::new(&format!("/proc/{pid}")).exists() {
            assert!(std::time::Instant::now() < deadline, "pid {pid} not reaped");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}
