//! Ingest: turn a directory into a Merkle tree, storing its files as blobs
//! (or only hashing them, for task inputs).
//!
//! Task outputs live under `<store>/tmp/`, so a regular file with a link
//! count of 1 on the store's filesystem is *taken over*: hashed, moved into
//! the work directory, then renamed into `blobs/` by `Store::commit` — no
//! copy. Anything else (a hard link, which another name could still write
//! through) is copied. Symlinks are read with `readlink` and never followed.
//! The walk is iterative (so is every walk of a stored tree), so depth is
//! bounded by `Limits::max_depth` (`MAX_DEPTH`, 256 levels: deeper paths
//! outgrow PATH_MAX when materialized or mounted), never by the stack. An
//! output whose files add up to more than `Limits::max_bytes` stops the
//! walk at the file that crosses it. Either way nothing is committed: what
//! was staged lies in the work directory, which its caller empties.
//!
//! Never through a symlink, even one swapped in while the walk runs (a
//! task's leftover process, a hostile writer in a synced tree): each
//! directory is opened with `O_NOFOLLOW` and must be the very directory its
//! path names (the kernel's path of the open descriptor, `/proc/self/fd/N`,
//! is compared, so a parent swapped for a symlink shows); its entries are
//! then read, opened (`O_NOFOLLOW`), readlink-ed and taken over relative to
//! that descriptor, never by re-resolving a path.

use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::error::{IoContext, Result, StoreError};
use super::tree::{name_problem, Node, Tree, TreeEntry};
use super::{Staged, Store};
use crate::hash::Digest;

/// What ingest does with what it reads.
pub enum Sink<'a> {
    /// Store blobs: stage them in `work` (a dir under `tmp/`) into `staged`.
    Store {
        store: &'a Store,
        work: &'a Path,
        staged: &'a mut Staged,
    },
    /// Only compute digests (host inputs).
    HashOnly,
}

/// The deepest directory nesting a stored tree may have (the root is 0).
pub const MAX_DEPTH: usize = 256;

/// Bounds on one ingest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Directories nested deeper than this are refused (`TooDeep`).
    pub max_depth: usize,
    /// Files adding up to more bytes than this are refused (`TooLarge`).
    pub max_bytes: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_depth: MAX_DEPTH,
            max_bytes: None,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ingested {
    /// Root tree digest (or, for `hash_path` on a file, the file's digest).
    pub digest: Digest,
    /// Sum of file sizes.
    pub bytes: u64,
    pub files: u64,
}

struct DirWork {
    path: PathBuf,
    /// Where the kernel must find it: the root's real path, joined with names.
    real: Option<PathBuf>,
    parent: Option<usize>,
    name: Vec<u8>,
    tree: Tree,
    depth: usize,
}

/// Ingest the directory `root` as a tree, within the default `Limits`.
pub fn ingest_dir(root: &Path, sink: Sink<'_>) -> Result<Ingested> {
    ingest_dir_limited(root, sink, Limits::default())
}

/// Ingest the directory `root` as a tree, refusing one beyond `limits`.
pub fn ingest_dir_limited(root: &Path, mut sink: Sink<'_>, limits: Limits) -> Result<Ingested> {
    let over = |bytes: u64| limits.max_bytes.is_some_and(|m| bytes > m);
    let mut dirs = vec![DirWork {
        path: root.to_path_buf(),
        real: None,
        parent: None,
        name: Vec::new(),
        tree: Tree::default(),
        depth: 0,
    }];
    let mut out = Ingested::default();
    // Files with other hard links, by inode: each is read (and copied) once
    // per ingest; 200 links to one 10 MB file took 2 GB of copies.
    let mut linked: std::collections::HashMap<(u64, u64), (Digest, u64, bool)> =
        std::collections::HashMap::new();
    let mut i = 0;
    while i < dirs.len() {
        let dir = dirs[i].path.clone();
        let unlock = matches!(sink, Sink::Store { .. });
        let (handle, real) = open_dir(&dir, dirs[i].real.as_deref(), unlock)?;
        // NB: entries are named through the open descriptor, never `dir`.
        let here = fd_path(&handle);
        let mut entries: Vec<_> = fs::read_dir(&here)
            .at(&dir)?
            .collect::<std::io::Result<_>>()
            .at(&dir)?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let path = dir.join(e.file_name());
            let at = here.join(e.file_name());
            let name = e.file_name().as_bytes().to_vec();
            if let Some(why) = name_problem(&name) {
                return Err(StoreError::BadName {
                    path,
                    reason: why.into(),
                });
            }
            let ft = e.file_type().at(&path)?;
            let node = if ft.is_dir() {
                let depth = dirs[i].depth + 1;
                if depth > limits.max_depth {
                    return Err(StoreError::TooDeep {
                        path,
                        max: limits.max_depth,
                    });
                }
                dirs.push(DirWork {
                    path,
                    real: Some(real.join(e.file_name())),
                    parent: Some(i),
                    name,
                    tree: Tree::default(),
                    depth,
                });
                continue;
            } else if ft.is_symlink() {
                let target = fs::read_link(&at).at(&path)?.into_os_string().into_vec();
                if target.is_empty() || target.len() > super::tree::MAX_TARGET {
                    return Err(StoreError::BadName {
                        path,
                        reason: "symlink target too long".into(),
                    });
                }
                Node::Symlink { target }
            } else if ft.is_file() {
                // NB: checked before hashing too, so a huge file is refused
                // without reading it; and after, as it may have grown.
                let limit = |bytes: u64, path: PathBuf| match limits.max_bytes {
                    Some(limit) if over(bytes) => Err(StoreError::TooLarge { path, limit }),
                    _ => Ok(()),
                };
                let md = e.metadata().at(&path)?;
                if limits.max_bytes.is_some() {
                    limit(out.bytes.saturating_add(md.len()), path.clone())?;
                }
                let inode = (md.nlink() > 1).then(|| (md.dev(), md.ino()));
                let (digest, size, exec) = match inode.and_then(|k| linked.get(&k)) {
                    Some(&seen) => seen,
                    None => {
                        let r = file_blob(&at, &path, None, &mut sink)?;
                        if let Some(k) = inode {
                            linked.insert(k, r);
                        }
                        r
                    }
                };
                out.files += 1;
                out.bytes += size;
                limit(out.bytes, path)?;
                Node::File { size, digest, exec }
            } else {
                return Err(StoreError::SpecialFile {
                    path,
                    kind: special_kind(&ft),
                });
            };
            dirs[i].tree.entries.push(TreeEntry { name, node });
        }
        i += 1;
    }
    // Children have higher indices than their parents: finish them first.
    for j in (0..dirs.len()).rev() {
        let mut tree = std::mem::take(&mut dirs[j].tree);
        tree.sort();
        let bytes = tree.encode();
        let digest = match &mut sink {
            Sink::Store {
                store,
                work,
                staged,
            } => store.stage_bytes(work, &bytes, staged)?,
            Sink::HashOnly => Digest::of(&bytes),
        };
        match dirs[j].parent {
            Some(p) => {
                let name = std::mem::take(&mut dirs[j].name);
                dirs[p].tree.entries.push(TreeEntry {
                    name,
                    node: Node::Dir { digest },
                });
            }
            None => out.digest = digest,
        }
    }
    Ok(out)
}

/// `/proc/self/fd/N`: names exactly the file `f` holds open, whatever
/// happens to the path it was opened by.
fn fd_path(f: &File) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd()))
}

/// Open the directory `path` for listing, never through a symlink: the last
/// component with `O_NOFOLLOW`, and, when `real` is given, the kernel must
/// have found it at `real` (a parent swapped for a symlink since the
/// parent's listing shows as another path). Returns it and its real path.
///
/// With `unlock`, give the owner rwx first: a task may leave a directory
/// read-only (`chmod a-w`, a `cp -a` of a 0555 `$DAGFS_IN` tree), and its
/// files are renamed out of it. Directory modes are not part of a tree.
fn open_dir(path: &Path, real: Option<&Path>, unlock: bool) -> Result<(File, PathBuf)> {
    // NB: O_PATH needs no permission on the directory itself, so a 0000
    // directory can be checked before it is unlocked.
    let p = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .at(path)?;
    let found = fs::read_link(fd_path(&p)).at(path)?;
    if real.is_some_and(|r| r != found) {
        return Err(StoreError::Changed {
            path: path.to_path_buf(),
            what: format!(
                "reached as {} (a directory above it was replaced)",
                found.display()
            ),
        });
    }
    if unlock {
        let mode = p.metadata().at(path)?.mode();
        if mode & 0o700 != 0o700 {
            // Through the descriptor: the inode checked above, not a path.
            fs::set_permissions(
                fd_path(&p),
                fs::Permissions::from_mode((mode | 0o700) & 0o7777),
            )
            .at(path)?;
        }
    }
    let d = File::open(fd_path(&p)).at(path)?;
    Ok((d, found))
}

/// Digest of a host path: a file's blob digest, a directory's tree digest, a
/// symlink's target (hashed as a one-entry tree so kinds never collide).
pub fn hash_path(path: &Path) -> Result<Ingested> {
    let md = fs::symlink_metadata(path).at(path)?;
    if md.is_dir() {
        ingest_dir(path, Sink::HashOnly)
    } else if md.is_file() {
        let (digest, bytes, _) = file_blob(path, path, None, &mut Sink::HashOnly)?;
        Ok(Ingested {
            digest,
            bytes,
            files: 1,
        })
    } else if md.file_type().is_symlink() {
        let target = fs::read_link(path).at(path)?.into_os_string().into_vec();
        let tree = Tree {
            entries: vec![TreeEntry {
                name: b"link".to_vec(),
                node: Node::Symlink { target },
            }],
        };
        Ok(Ingested {
            digest: Digest::of(&tree.encode()),
            bytes: 0,
            files: 0,
        })
    } else {
        Err(StoreError::SpecialFile {
            path: path.to_path_buf(),
            kind: special_kind(&md.file_type()),
        })
    }
}

fn special_kind(ft: &fs::FileType) -> &'static str {
    if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_block_device() {
        "a block device"
    } else if ft.is_char_device() {
        "a character device"
    } else {
        "a special file"
    }
}

/// Hash (and for `Sink::Store`, stage) one regular file: (digest, size, exec).
pub fn ingest_file(path: &Path, mut sink: Sink<'_>) -> Result<(Digest, u64, bool)> {
    file_blob(path, path, None, &mut sink)
}

/// `ingest_file` for a file of a host tree, `path` absolute and canonical
/// (no symlink above it): refused if the kernel found it anywhere else,
/// as when a directory above it is swapped for a symlink meanwhile.
pub fn ingest_host_file(path: &Path, mut sink: Sink<'_>) -> Result<(Digest, u64, bool)> {
    file_blob(path, path, Some(path), &mut sink)
}

/// Open a regular file for reading, never through a symlink: `O_NOFOLLOW`
/// (and `O_NONBLOCK`, so a FIFO swapped in cannot hang the open), checked
/// to be a regular file, and, if `real` is given, found by the kernel at
/// `real`. `shown` names it in errors.
pub fn open_regular(at: &Path, shown: &Path, real: Option<&Path>) -> Result<(File, fs::Metadata)> {
    let flags = libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC;
    // NB: `real` given and `at` is `real`: openat2 can refuse every symlink
    // on the way (one syscall, where the fallback reads the descriptor's
    // path back from /proc).
    let (f, checked) = match real
        .filter(|r| *r == at)
        .map(|r| open_no_symlinks(r, flags))
    {
        Some(Ok(f)) => (f, true),
        Some(Err(e)) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(StoreError::Changed {
                path: shown.to_path_buf(),
                what: "reached through a symlink (a directory above it was replaced)".into(),
            })
        }
        Some(Err(e)) if !matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EPERM)) => {
            return Err(StoreError::Io {
                path: shown.to_path_buf(),
                source: e,
            })
        }
        _ => (
            OpenOptions::new()
                .read(true)
                .custom_flags(flags)
                .open(at)
                .at(shown)?,
            false,
        ),
    };
    let md = f.metadata().at(shown)?;
    if !md.is_file() {
        return Err(StoreError::Changed {
            path: shown.to_path_buf(),
            what: "no longer a regular file".into(),
        });
    }
    if let Some(real) = real.filter(|_| !checked) {
        let found = fs::read_link(fd_path(&f)).at(shown)?;
        if found != real {
            return Err(StoreError::Changed {
                path: shown.to_path_buf(),
                what: format!(
                    "reached as {} (a directory above it was replaced)",
                    found.display()
                ),
            });
        }
    }
    Ok((f, md))
}

/// `openat2(path, flags, RESOLVE_NO_SYMLINKS)` for reading: fails with
/// ELOOP if any component of `path` is a symlink (ENOSYS before Linux 5.6;
/// EPERM under seccomp filters that do not know it).
fn open_no_symlinks(path: &Path, flags: i32) -> std::io::Result<File> {
    use std::os::fd::FromRawFd;
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: zeroed is a valid open_how; the fields set are plain integers.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_RDONLY) as u64;
    how.resolve = libc::RESOLVE_NO_SYMLINKS;
    // SAFETY: a NUL-terminated path and an open_how of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            libc::AT_FDCWD,
            c.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a descriptor the kernel just returned, owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd as i32) })
}

/// One regular file, opened at `at` (within a directory the walk holds
/// open), named `path`.
fn file_blob(
    at: &Path,
    path: &Path,
    real: Option<&Path>,
    sink: &mut Sink<'_>,
) -> Result<(Digest, u64, bool)> {
    let (mut f, md) = open_regular(at, path, real)?;
    let exec = md.mode() & 0o111 != 0;
    match sink {
        Sink::HashOnly => {
            let (digest, size) = hash_reader(&mut f, None, path)?;
            Ok((digest, size, exec))
        }
        Sink::Store {
            store,
            work,
            staged,
        } => {
            let store_dev = store.tmp_dev()?;
            if md.nlink() == 1 && md.dev() == store_dev && path.starts_with(store.tmp_root()) {
                let (digest, size) = hash_reader(&mut f, None, path)?;
                // NB: staged already (a task's empty stdout and stderr):
                // the file stays where it is.
                if !(staged.has_digest(&digest) || store.stored_for(staged, &digest)) {
                    // NB: moved now, by `at` (relative to the open directory):
                    // renaming `path` at commit would resolve it again, maybe
                    // through a directory swapped for a symlink meanwhile.
                    let tmp = work.join(format!("take-{}", staged.blob_count()));
                    fs::rename(at, &tmp).at(path)?;
                    let moved = fs::symlink_metadata(&tmp).at(&tmp)?;
                    if (moved.dev(), moved.ino()) != (md.dev(), md.ino()) {
                        return Err(StoreError::Changed {
                            path: path.to_path_buf(),
                            what: "replaced by another file between hashing and storing".into(),
                        });
                    }
                    store.stage_file(tmp, digest, Some((md.dev(), md.ino())), staged);
                }
                Ok((digest, size, exec))
            } else {
                let tmp = work.join(format!("copy-{}", staged.blob_count()));
                let mut w = File::create(&tmp).at(&tmp)?;
                let (digest, size) = hash_reader(&mut f, Some(&mut w), path)?;
                if staged.has_digest(&digest) || store.stored_for(staged, &digest) {
                    // NB: not kept until the run ends: space is what a copy costs.
                    let _ = fs::remove_file(&tmp);
                } else {
                    store.stage_file(tmp, digest, None, staged);
                }
                Ok((digest, size, exec))
            }
        }
    }
}

fn hash_reader(r: &mut File, copy: Option<&mut File>, path: &Path) -> Result<(Digest, u64)> {
    super::read::hash_copy(r, copy).at(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    /// A task's empty stdout and stderr: the first is taken over, the
    /// second (staged already) stays where it is, and one blob is staged.
    #[test]
    fn a_file_staged_already_is_not_taken_over_again() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(&t.path().join("s"), &mut |_| {}).unwrap();
        let work = store.tempdir("w").unwrap();
        let stage = store.tempdir("stage").unwrap();
        let (a, b) = (work.path().join("stdout"), work.path().join("stderr"));
        fs::write(&a, b"").unwrap();
        fs::write(&b, b"").unwrap();
        let mut staged = Staged::default();
        let mut take = |p: &Path| {
            let sink = Sink::Store {
                store: &store,
                work: stage.path(),
                staged: &mut staged,
            };
            ingest_file(p, sink).unwrap().0
        };
        let (da, db) = (take(&a), take(&b));
        assert_eq!(da, db);
        assert!(!a.exists(), "the first was taken over");
        assert!(b.exists(), "the second stays");
        assert_eq!(staged.blob_count(), 1);
        store.commit(staged).unwrap();
        assert!(store.has_blob(&da));
    }

    #[test]
    fn hash_only_and_store_agree() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(&t.path().join("s"), &mut |_| {}).unwrap();
        let out = store.tempdir("out").unwrap();
        let o = out.path();
        fs::create_dir_all(o.join("a/b")).unwrap();
        fs::create_dir_all(o.join("empty")).unwrap();
        fs::write(o.join("a/b/f"), b"data").unwrap();
        fs::write(o.join("x"), b"exec").unwrap();
        fs::set_permissions(o.join("x"), fs::Permissions::from_mode(0o755)).unwrap();
        symlink("../../etc/passwd", o.join("link")).unwrap();
        let hashed = hash_path(o).unwrap();
        let work = store.tempdir("w").unwrap();
        let mut st = Staged::default();
        let got = ingest_dir(
            o,
            Sink::Store {
                store: &store,
                work: work.path(),
                staged: &mut st,
            },
        )
        .unwrap();
        store.commit(st).unwrap();
        assert_eq!(got.digest, hashed.digest);
        assert_eq!(got.files, 2);
        let root = store.read_tree(&got.digest).unwrap();
        let names: Vec<_> = root
            .entries
            .iter()
            .map(|e| String::from_utf8_lossy(&e.name).to_string())
            .collect();
        assert_eq!(names, ["a", "empty", "link", "x"]);
        assert_eq!(
            root.find(b"link").unwrap().node,
            Node::Symlink {
                target: b"../../etc/passwd".to_vec()
            }
        );
        assert!(matches!(
            root.find(b"x").unwrap().node,
            Node::File {
                exec: true,
                size: 4,
                ..
            }
        ));
    }

    fn store_ingest(
        store: &Store,
        root: &Path,
        limits: Limits,
    ) -> (Result<Ingested>, tempfile::TempDir) {
        let work = store.tempdir("w").unwrap();
        let mut st = Staged::default();
        let got = ingest_dir_limited(
            root,
            Sink::Store {
                store,
                work: work.path(),
                staged: &mut st,
            },
            limits,
        );
        (got, work)
    }

    #[test]
    fn depth_past_the_limit_names_the_first_path_too_deep() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(&t.path().join("s"), &mut |_| {}).unwrap();
        let out = store.tempdir("out").unwrap();
        let mut p = out.path().to_path_buf();
        for _ in 0..5 {
            p.push("d");
        }
        fs::create_dir_all(&p).unwrap();
        fs::write(p.join("f"), b"x").unwrap();
        let limits = |max_depth| Limits {
            max_depth,
            max_bytes: None,
        };
        assert!(store_ingest(&store, out.path(), limits(5)).0.is_ok());
        let err = store_ingest(&store, out.path(), limits(4)).0.unwrap_err();
        let deepest = p.clone();
        assert!(
            matches!(err, StoreError::TooDeep { ref path, max: 4 } if path == &deepest),
            "{err}"
        );
        assert!(err.to_string().contains("deeper than 4"), "{err}");
    }

    #[test]
    fn size_past_the_limit_is_refused_at_the_file_that_crosses_it() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(&t.path().join("s"), &mut |_| {}).unwrap();
        let out = store.tempdir("out").unwrap();
        fs::write(out.path().join("a"), vec![1u8; 600]).unwrap();
        fs::write(out.path().join("b"), vec![2u8; 600]).unwrap();
        let limits = |max_bytes| Limits {
            max_bytes: Some(max_bytes),
            ..Limits::default()
        };
        let err = store_ingest(&store, out.path(), limits(1199))
            .0
            .unwrap_err();
        assert!(
            matches!(err, StoreError::TooLarge { ref path, limit: 1199 } if path.ends_with("b")),
            "{err}"
        );
        // `b` was refused before it was read or taken over (`a` was taken).
        assert!(out.path().join("b").exists());
        fs::write(out.path().join("a"), vec![1u8; 600]).unwrap();
        // Exactly at the limit is fine.
        let (got, _w) = store_ingest(&store, out.path(), limits(1200));
        assert_eq!(got.unwrap().bytes, 1200);
    }

    #[test]
    fn fifo_is_rejected_with_its_path() {
        let t = tempfile::tempdir().unwrap();
        let fifo = t.path().join("pipe");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        let err = hash_path(t.path()).unwrap_err();
        assert!(
            matches!(err, StoreError::SpecialFile { ref path, .. } if path == &fifo),
            "{err}"
        );
    }
}
