//! What is mounted where (`/proc/self/mountinfo`), which mounts are dagfs's,
//! stale-mount detection and lazy unmounting.
//!
//! May call: std, `nix`. Used by `sync` (never scan a dagfs mount), the
//! daemon and the CLI's `mount`/`umount`.

use std::io;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub mountpoint: PathBuf,
    /// e.g. `fuse.dagfs`.
    pub fstype: String,
    /// For dagfs: the store directory.
    pub source: String,
    /// Per-mount options (`ro,nosuid,nodev,...`) then super options.
    pub options: String,
}

pub const FSTYPE: &str = "fuse.dagfs";

impl MountEntry {
    /// A dagfs mount (its type is `FSTYPE`).
    pub fn is_dagfs(&self) -> bool {
        self.fstype == FSTYPE
    }
}

/// Undo mountinfo's octal escapes (`\040` is a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let l: Vec<&str> = left.split(' ').collect();
        let r: Vec<&str> = right.split(' ').collect();
        if l.len() < 6 || r.len() < 2 {
            continue;
        }
        out.push(MountEntry {
            mountpoint: PathBuf::from(unescape(l[4])),
            fstype: r[0].to_string(),
            source: unescape(r[1]),
            options: format!("{},{}", l[5], r.get(2).copied().unwrap_or("")),
        });
    }
    out
}

pub fn mounts() -> io::Result<Vec<MountEntry>> {
    Ok(parse_mountinfo(&std::fs::read_to_string(
        "/proc/self/mountinfo",
    )?))
}

/// The topmost mount at `mnt`, if any.
pub fn find(mnt: &Path) -> io::Result<Option<MountEntry>> {
    Ok(mounts()?.into_iter().rev().find(|m| m.mountpoint == mnt))
}

/// Whether the topmost mount at `mnt` is a dagfs mount (false when the
/// mount table cannot be read).
pub fn is_dagfs_mount(mnt: &Path) -> bool {
    matches!(find(mnt), Ok(Some(m)) if m.is_dagfs())
}

/// Where dagfs is mounted now, in mount order.
pub fn dagfs_mountpoints() -> io::Result<Vec<PathBuf>> {
    Ok(mounts()?
        .into_iter()
        .filter(MountEntry::is_dagfs)
        .map(|m| m.mountpoint)
        .collect())
}

/// Where dagfs is mounted, read again only when the mount table changed:
/// the kernel marks an open mount table (POLLPRI) at every mount and
/// unmount in the namespace, so a watch's pass costs one `poll` where it
/// read and parsed the whole table.
#[derive(Debug)]
pub struct DagfsMounts {
    /// Open before `now` was read: a change after that read is marked.
    /// None: it does not open, and every `get` reads the table.
    table: Option<std::fs::File>,
    now: Vec<PathBuf>,
}

impl DagfsMounts {
    pub fn new() -> DagfsMounts {
        let table = std::fs::File::open("/proc/self/mountinfo").ok();
        DagfsMounts {
            table,
            now: dagfs_mountpoints().unwrap_or_default(),
        }
    }

    /// Where dagfs is mounted now.
    pub fn get(&mut self) -> &[PathBuf] {
        if self.changed() {
            self.now = dagfs_mountpoints().unwrap_or_default();
        }
        &self.now
    }

    /// Whether a mount or unmount happened since the last call (or since
    /// `new`); true when that cannot be told.
    fn changed(&self) -> bool {
        use std::os::fd::AsRawFd;
        let Some(t) = &self.table else {
            return true;
        };
        let mut p = libc::pollfd {
            fd: t.as_raw_fd(),
            events: libc::POLLPRI,
            revents: 0,
        };
        // SAFETY: one valid pollfd, and no wait.
        let n = unsafe { libc::poll(&mut p, 1, 0) };
        n != 0
    }
}

impl Default for DagfsMounts {
    fn default() -> Self {
        DagfsMounts::new()
    }
}

/// The kind of filesystem `path` is on, if it is one that other machines
/// (or another kernel) may change: a write made there raises no inotify
/// event here, so a watch of it cannot vouch for it.
pub fn shared_fs(path: &Path) -> Option<&'static str> {
    let kind = nix::sys::statfs::statfs(path).ok()?.filesystem_type().0 as u64;
    Some(match kind {
        0x6969 => "nfs",
        0x517b => "smb",
        0xff53_4d42 => "cifs",
        0xfe53_4d42 => "smb2",
        0x0102_1997 => "9p",
        0x6573_5546 => "fuse",
        0x00c3_6400 => "ceph",
        0x5346_414f => "afs",
        0x0bd0_0bd0 => "lustre",
        0x0116_1970 => "gfs2",
        0x7461_636f => "ocfs2",
        _ => return None,
    })
}

/// A FUSE mount whose server is gone answers ENOTCONN.
///
/// NB: `statfs`, not `stat`: the kernel answers `stat` of a FUSE root from
/// its attribute cache for up to the attribute TTL after the daemon died,
/// while `statfs` always asks the daemon.
pub fn is_stale(mnt: &Path) -> bool {
    matches!(
        nix::sys::statfs::statfs(mnt),
        Err(nix::errno::Errno::ENOTCONN)
    )
}

/// Detach `mnt` now (`umount -l`); falls back to `fusermount3 -uz` for an
/// unprivileged user's mount.
pub fn lazy_unmount(mnt: &Path) -> io::Result<()> {
    match nix::mount::umount2(mnt, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EPERM) => {
            let st = std::process::Command::new("fusermount3")
                .arg("-u")
                .arg("-z")
                .arg(mnt)
                .status()?;
            if st.success() {
                Ok(())
            } else {
                Err(io::Error::other(format!(
                    "fusermount3 -uz {} failed ({st})",
                    mnt.display()
                )))
            }
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mountinfo_lines() {
        let text = "36 35 98:0 /mnt1 /mnt/parent rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n\
                    99 36 0:55 / /tmp/my\\040mnt ro,nosuid,nodev,relatime - fuse.dagfs /var/cache/dagfs rw,user_id=0,group_id=0,default_permissions,allow_other\n\
                    garbage line\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 2);
        assert_eq!(m[1].mountpoint, PathBuf::from("/tmp/my mnt"));
        assert_eq!(m[1].fstype, FSTYPE);
        assert!(m[1].is_dagfs() && !m[0].is_dagfs());
        assert_eq!(m[1].source, "/var/cache/dagfs");
        assert!(m[1].options.contains("nosuid") && m[1].options.contains("default_permissions"));
    }

    /// A mount or an unmount marks the open table once; nothing else does.
    /// (Needs root to mount a tmpfs: skipped, saying so, without it.)
    #[test]
    fn a_mount_and_an_unmount_are_each_seen_once() {
        use nix::mount::{mount, umount2, MntFlags, MsFlags};
        let t = tempfile::tempdir().unwrap();
        let m = DagfsMounts::new();
        assert!(m.table.is_some(), "the mount table opens");
        assert!(!m.changed(), "nothing happened");
        let none: Option<&str> = None;
        if let Err(e) = mount(
            Some("tmpfs"),
            t.path(),
            Some("tmpfs"),
            MsFlags::empty(),
            none,
        ) {
            eprintln!("SKIPPED: cannot mount a tmpfs here: {e}");
            return;
        }
        let seen = m.changed();
        let again = m.changed();
        umount2(t.path(), MntFlags::MNT_DETACH).unwrap();
        assert!(seen, "a mount");
        assert!(!again, "seen once");
        assert!(m.changed(), "an unmount");
    }
}
