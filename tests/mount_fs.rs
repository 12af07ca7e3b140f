//! Real FUSE mounts of a real store. Each test runs a small pipeline into its
//! own temporary store (tasks also copy what they wrote to `expected/<task>`
//! beside the pipeline), mounts the store with `dagfs::fs::mount`, and looks
//! at it with the tools people use (`ls`, `cat`, `find`, `stat`, `readlink`,
//! `diff -r`, `cp -a`, `getfattr`) and with raw syscalls. Two tests mount a
//! fake `StoreView` instead: one serving a million-entry directory (no task
//! need write a million files), one panicking on demand.
//!
//! Needs root and /dev/fuse. Every mount is unmounted by `Unmount::drop`,
//! also when an assertion fails.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dagfs::daemon::view::CacheView;
use dagfs::daemon::Gauges;
use dagfs::exec::runner::ShellRunner;
use dagfs::exec::scheduler::{self, Options, Report};
use dagfs::exec::{shell, Pipeline};
use dagfs::fs::view::RunInfo;
use dagfs::fs::view::{EntryInfo, StoreView, ViewError};
use dagfs::fs::{mount, DagFs, FsCounters, FsOptions, Passthrough};
use dagfs::hash::HexPrefix;
use dagfs::store::Tree;
use dagfs::{Cache, CachePolicy, Digest};

// ---------------------------------------------------------------------------
// harness
// ---------------------------------------------------------------------------

/// `build` writes every kind of thing a tree can hold; `report` reads it
/// through `$DAGFS_IN`. Both copy their output to `expected/<task>`.
const PIPELINE: &str = r#"
name = "app"

[tasks.build]
run = '''
set -e
o="$DAGFS_OUT"
mkdir -p "$o/bin" "$o/src/deep/er" "$o/empty"
printf 'hello\n' > "$o/hello.txt"
printf '#!/bin/sh\necho "hello from dagfs $1"\n' > "$o/bin/greet"
chmod 755 "$o/bin/greet"
ln -s /etc/passwd "$o/passwd-link"
ln -s ../.. "$o/src/deep/up"
ln -s ../hello.txt "$o/bin/hello-link"
printf 'deep\n' > "$o/src/deep/er/leaf.txt"
: > "$o/src/empty-file"
printf 'latin-1 name\n' > "$o/$(printf 'caf\351')"
yes 'dagfs 1 MiB' | head -c 1048576 > "$o/big.bin"
rm -rf expected/build && mkdir -p expected/build && cp -a "$o/." expected/build/
'''

[tasks.report]
deps = ["build"]
run = '''
set -e
wc -c < "$DAGFS_IN/build/big.bin" > "$DAGFS_OUT/size.txt"
rm -rf expected/report && mkdir -p expected/report && cp -a "$DAGFS_OUT/." expected/report/
'''
"#;

/// One directory of 100,000 empty files.
const MANY: &str = r#"
name = "many"

[tasks.many]
run = '''
set -e
mkdir "$DAGFS_OUT/d"
cd "$DAGFS_OUT/d"
seq -f 'f%06g' 1 100000 | xargs touch
'''
"#;

/// A mounted store. Fields drop in order: unmount first, the temporary
/// directory (store and mountpoint) last.
struct Mounted {
    _mount: Unmount,
    mnt: PathBuf,
    root: PathBuf,
    cache: Arc<Cache>,
    view: Arc<CacheView>,
    /// task -> its key after the first run
    keys: BTreeMap<String, Digest>,
    counters: Arc<FsCounters>,
    _tmp: tempfile::TempDir,
}

/// Unmounts on drop, also when a test fails: `umount_and_join`, then a lazy
/// detach if the mount is somehow still there (busy, or the join failed).
struct Unmount(Option<fuser::BackgroundSession>, PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        if let Some(s) = self.0.take() {
            if let Err(e) = s.umount_and_join() {
                eprintln!("umount {}: {e}; detaching", self.1.display());
            }
        }
        if is_mounted(&self.1) {
            let c = cpath(&self.1);
            // SAFETY: a valid NUL-terminated path; no memory is shared.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

fn is_mounted(mnt: &Path) -> bool {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mount_line(&info, mnt).is_some()
}

/// The /proc/self/mountinfo line of `mnt`.
fn mount_line<'a>(info: &'a str, mnt: &Path) -> Option<&'a str> {
    let want = mnt.to_str().unwrap();
    info.lines().find(|l| l.split(' ').nth(4) == Some(want))
}

/// Poll `f` until it holds, for at most 10 s.
fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn run_pipeline(cache: &Cache, root: &Path) -> Report {
    let p = Pipeline::load(&root.join("dagfs.toml")).expect("pipeline");
    let plan = shell::plan(&p, &[], Arc::new(ShellRunner), cache).expect("plan");
    let report = scheduler::run(cache, &plan, &Options::default(), &mut |_| {}).expect("run");
    for (name, o) in report.names.iter().zip(&report.outcomes) {
        assert!(
            o.error.is_none(),
            "task {name} failed: {:?}\n{}",
            o.error,
            o.log_tail.as_deref().unwrap_or("")
        );
    }
    report
}

type Wrap = fn(Arc<dyn StoreView>) -> Arc<dyn StoreView>;

fn plain(v: Arc<dyn StoreView>) -> Arc<dyn StoreView> {
    v
}

fn setup_with(pipeline: &str, opts: FsOptions, wrap: Wrap) -> Mounted {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().canonicalize().unwrap();
    fs::write(root.join("dagfs.toml"), pipeline).unwrap();
    let cache = Arc::new(Cache::open(&root.join("store"), CachePolicy::default()).unwrap());
    let report = run_pipeline(&cache, &root);
    let view = Arc::new(CacheView::new(cache.clone(), Arc::new(Gauges::default())));
    let keys: BTreeMap<String, Digest> = view.tasks(&report.dag).unwrap().into_iter().collect();
    assert_eq!(
        keys.len(),
        report.names.len(),
        "every task has a latest key"
    );
    let counters = Arc::new(FsCounters::default());
    let fs = DagFs::new(wrap(view.clone()), &opts, counters.clone());
    let mnt = root.join("mnt");
    fs::create_dir(&mnt).unwrap();
    let session = mount(fs, &mnt, &opts).expect("mount");
    let m = Mounted {
        _mount: Unmount(Some(session), mnt.clone()),
        mnt,
        root,
        cache,
        view,
        keys,
        counters,
        _tmp: tmp,
    };
    wait_until("the mount", || {
        is_mounted(&m.mnt) && fs::metadata(m.mnt.join("keys")).is_ok()
    });
    m
}

fn setup() -> Mounted {
    setup_with(PIPELINE, FsOptions::default(), plain)
}

impl Mounted {
    fn key(&self, task: &str) -> Digest {
        self.keys[task]
    }

    /// `/keys/<key of task>`
    fn kdir(&self, task: &str) -> PathBuf {
        self.mnt.join("keys").join(self.key(task).to_hex())
    }

    fn expected(&self, task: &str) -> PathBuf {
        self.root.join("expected").join(task)
    }

    fn entry(&self, task: &str) -> EntryInfo {
        self.view.entry(&self.key(task)).unwrap().unwrap()
    }
}

/// Run a program; it must succeed.
fn run(prog: &str, args: &[&dyn AsRef<std::ffi::OsStr>]) -> Vec<u8> {
    let out = try_run(prog, args);
    assert!(
        out.status.success(),
        "{prog} {:?} failed ({}): {}{}",
        args.iter()
            .map(|a| a.as_ref().to_owned())
            .collect::<Vec<_>>(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn try_run(prog: &str, args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    Command::new(prog)
        .args(args.iter().map(|a| a.as_ref()))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {prog}: {e}"))
}

/// Output as text (lossy: some names are not UTF-8 on purpose).
fn text(b: Vec<u8>) -> String {
    String::from_utf8_lossy(&b).into_owned()
}

fn errno_of<T: std::fmt::Debug>(r: io::Result<T>) -> i32 {
    r.expect_err("want an error")
        .raw_os_error()
        .expect("an errno")
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

/// lgetxattr (or getxattr when `follow`) into a buffer of `size` bytes:
/// Ok(value or, for size 0, the length as bytes) or Err(errno).
fn xattr(p: &Path, name: &str, size: usize, follow: bool) -> Result<Vec<u8>, i32> {
    let (p, n) = (cpath(p), CString::new(name).unwrap());
    let mut buf = vec![0u8; size];
    let ptr = if size == 0 {
        std::ptr::null_mut()
    } else {
        buf.as_mut_ptr().cast()
    };
    // SAFETY: valid C strings; `ptr` is null with size 0 or points to `size`
    // writable bytes.
    let r = unsafe {
        if follow {
            libc::getxattr(p.as_ptr(), n.as_ptr(), ptr, size)
        } else {
            libc::lgetxattr(p.as_ptr(), n.as_ptr(), ptr, size)
        }
    };
    if r < 0 {
        return Err(io::Error::last_os_error().raw_os_error().unwrap());
    }
    if size == 0 {
        return Ok(r.to_string().into_bytes());
    }
    buf.truncate(r as usize);
    Ok(buf)
}

/// The whole file, read through mmap(2).
fn mmap_read(p: &Path) -> Vec<u8> {
    let f = File::open(p).unwrap();
    let len = f.metadata().unwrap().len() as usize;
    assert!(len > 0);
    // SAFETY: a private read-only mapping of `len` bytes of an open file,
    // unmapped below before `f` closes; the slice does not outlive it.
    unsafe {
        let ptr = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_PRIVATE,
            f.as_raw_fd(),
            0,
        );
        assert_ne!(
            ptr,
            libc::MAP_FAILED,
            "mmap: {}",
            io::Error::last_os_error()
        );
        let v = std::slice::from_raw_parts(ptr as *const u8, len).to_vec();
        libc::munmap(ptr, len);
        v
    }
}

fn ino(p: &Path) -> u64 {
    fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .ino()
}

// ---------------------------------------------------------------------------
// tests
// ---------------------------------------------------------------------------

#[test]
fn output_trees_read_back_exactly_with_everyday_tools() {
    let m = setup();
    let k = m.kdir("build");

    // diff -r of every output tree against what the task wrote.
    for task in m.keys.keys() {
        let exp = m.expected(task);
        let got = m.kdir(task);
        run("diff", &[&"-r", &"--no-dereference", &exp, &got]);
    }

    let ls = text(run("ls", &[&"-l", &k]));
    for want in [
        "hello.txt",
        "big.bin",
        "empty",
        "passwd-link -> /etc/passwd",
    ] {
        assert!(ls.contains(want), "ls -l lacks {want:?}:\n{ls}");
    }
    assert_eq!(run("cat", &[&k.join("hello.txt")]), b"hello\n");
    assert_eq!(
        run("cat", &[&k.join(std::ffi::OsStr::from_bytes(b"caf\xe9"))]),
        b"latin-1 name\n"
    );

    // find sees exactly what the task wrote.
    let count = |dir: &Path| run("find", &[&dir]).iter().filter(|&&b| b == b'\n').count();
    assert_eq!(count(&k), count(&m.expected("build")));
    assert_eq!(count(&k), 15);

    // Modes, kinds, sizes, link counts.
    let stat = |p: &str| {
        text(run("stat", &[&"-c", &"%a %F %s %h", &k.join(p)]))
            .trim()
            .to_string()
    };
    assert_eq!(stat("hello.txt"), "444 regular file 6 1");
    let greet_len = fs::metadata(m.expected("build").join("bin/greet"))
        .unwrap()
        .len();
    assert_eq!(stat("bin/greet"), format!("555 regular file {greet_len} 1"));
    assert_eq!(stat("big.bin"), "444 regular file 1048576 1");
    assert_eq!(stat("src/empty-file"), "444 regular empty file 0 1");
    assert_eq!(stat("bin"), "555 directory 0 2");
    assert_eq!(stat("empty"), "555 directory 0 2");
    assert_eq!(stat("passwd-link"), "777 symbolic link 11 1");
    assert_eq!(run("ls", &[&"-A", &k.join("empty")]), b"");

    // mtime is the entry's creation time; owner is the mount's.
    let created_s = m.entry("build").created_ms / 1000;
    let meta = fs::metadata(k.join("hello.txt")).unwrap();
    assert_eq!(meta.mtime() as u64, created_s);
    assert_eq!((meta.uid(), meta.gid()), (0, 0));

    // Symlink targets byte-exact.
    assert_eq!(run("readlink", &[&k.join("passwd-link")]), b"/etc/passwd\n");
    assert_eq!(run("readlink", &[&k.join("src/deep/up")]), b"../..\n");
    assert_eq!(fs::read(k.join("bin/hello-link")).unwrap(), b"hello\n");
    assert_eq!(
        fs::read_link(k.join("src/deep/up")).unwrap(),
        PathBuf::from("../..")
    );

    // A stored executable runs straight from the mount.
    let out = run(k.join("bin/greet").to_str().unwrap(), &[&"there"]);
    assert_eq!(out, b"hello from dagfs there\n");

    // mmap and read(2) agree with the original, byte for byte.
    let want = fs::read(m.expected("build").join("big.bin")).unwrap();
    assert_eq!(want.len(), 1 << 20);
    assert!(mmap_read(&k.join("big.bin")) == want, "mmap read differs");
    assert!(fs::read(k.join("big.bin")).unwrap() == want, "read differs");

    // cp -a out of the mount, then diff -r the copy.
    let copy = m.root.join("copy");
    run("cp", &[&"-a", &k, &copy]);
    run(
        "diff",
        &[&"-r", &"--no-dereference", &m.expected("build"), &copy],
    );
    let copied = fs::metadata(copy.join("bin/greet")).unwrap();
    assert_eq!(copied.permissions().mode() & 0o777, 0o555);
    assert!(fs::symlink_metadata(copy.join("passwd-link"))
        .unwrap()
        .file_type()
        .is_symlink());

    // statfs
    let sf = text(run("stat", &[&"-f", &"-c", &"%l %S", &m.mnt]));
    assert_eq!(sf.trim(), "255 4096");
}

#[test]
fn every_write_answers_erofs() {
    let m = setup();
    let k = m.kdir("build");
    let file = k.join("hello.txt");
    const EROFS: i32 = libc::EROFS;
    assert_eq!(errno_of(File::create(k.join("new.txt"))), EROFS);
    assert_eq!(errno_of(OpenOptions::new().write(true).open(&file)), EROFS);
    assert_eq!(
        errno_of(OpenOptions::new().read(true).write(true).open(&file)),
        EROFS
    );
    assert_eq!(errno_of(OpenOptions::new().append(true).open(&file)), EROFS);
    assert_eq!(errno_of(fs::create_dir(k.join("newdir"))), EROFS);
    assert_eq!(errno_of(fs::remove_file(&file)), EROFS);
    assert_eq!(errno_of(fs::remove_dir(k.join("empty"))), EROFS);
    assert_eq!(errno_of(fs::rename(&file, k.join("moved"))), EROFS);
    assert_eq!(errno_of(fs::hard_link(&file, k.join("hard"))), EROFS);
    assert_eq!(errno_of(symlink("x", k.join("sym"))), EROFS);
    assert_eq!(
        errno_of(fs::set_permissions(
            &file,
            fs::Permissions::from_mode(0o644)
        )),
        EROFS
    );
    for p in [
        m.mnt.join("dags/x"),
        m.mnt.join("keys/x"),
        m.mnt.join(".dagfs/x"),
    ] {
        assert_eq!(errno_of(File::create(&p)), EROFS, "{}", p.display());
    }
    let (p, n) = (cpath(&file), CString::new("user.x").unwrap());
    // SAFETY: valid C strings and a 1-byte value.
    let r = unsafe { libc::setxattr(p.as_ptr(), n.as_ptr(), b"1".as_ptr().cast(), 1, 0) };
    assert_eq!(r, -1);
    assert_eq!(io::Error::last_os_error().raw_os_error(), Some(EROFS));
    // SAFETY: as above.
    let r = unsafe { libc::access(p.as_ptr(), libc::W_OK) };
    assert_eq!(r, -1);
    assert_eq!(io::Error::last_os_error().raw_os_error(), Some(EROFS));
    // SAFETY: as above.
    assert_eq!(unsafe { libc::access(p.as_ptr(), libc::R_OK) }, 0);
    // Nothing changed.
    assert_eq!(fs::read(&file).unwrap(), b"hello\n");
}

#[test]
fn prefixes_resolve_to_the_same_node_and_bad_names_are_enoent() {
    let m = setup();
    let key = m.key("build").to_hex();
    let keys = m.mnt.join("keys");
    let full = keys.join(&key);
    let short = keys.join(&key[..8]);
    assert_eq!(fs::read(short.join("hello.txt")).unwrap(), b"hello\n");
    assert_eq!(ino(&short), ino(&full), "a prefix names the same inode");
    assert_eq!(ino(&keys.join(&key[..20])), ino(&full));
    assert_eq!(
        ino(&keys.join(key[..8].to_ascii_uppercase())),
        ino(&full),
        "hex is case-insensitive"
    );
    let enoent = |p: PathBuf| {
        assert_eq!(
            errno_of(fs::symlink_metadata(&p)),
            libc::ENOENT,
            "{}",
            p.display()
        )
    };
    enoent(keys.join(&key[..7]));
    enoent(keys.join("zzzzzzzz"));
    enoent(keys.join(format!("{key}0")));
    enoent(keys.join("a".repeat(300)));
    enoent(keys.join("..abcdef01"));
    enoent(keys.join(format!("{}..", &key[..8])));
    enoent(keys.join("00000000"));
    enoent(m.mnt.join("nope"));
    enoent(m.mnt.join("runs/007"));
    enoent(m.mnt.join("runs/99999"));
    enoent(m.mnt.join("dags/app/nope"));
    enoent(m.mnt.join("dags/nope"));
    enoent(full.join("nope"));
    assert_eq!(
        errno_of(fs::metadata(full.join("hello.txt/x"))),
        libc::ENOTDIR
    );

    // /keys lists every key by its full name; /trees and /blobs list nothing
    // yet resolve any digest.
    let mut listed: Vec<String> = fs::read_dir(&keys)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    listed.sort();
    let all: Vec<String> = m
        .view
        .keys_after(None, usize::MAX)
        .unwrap()
        .iter()
        .map(Digest::to_hex)
        .collect();
    assert_eq!(listed, all);
    assert!(listed.contains(&key));
    assert_eq!(fs::read_dir(m.mnt.join("trees")).unwrap().count(), 0);
    assert_eq!(fs::read_dir(m.mnt.join("blobs")).unwrap().count(), 0);

    let output = m.entry("build").output.to_hex();
    let tree = m.mnt.join("trees").join(&output);
    run(
        "diff",
        &[&"-r", &"--no-dereference", &m.expected("build"), &tree],
    );
    let tree_short = m.mnt.join("trees").join(&output[..10]);
    assert_eq!(ino(&tree_short), ino(&tree));
    let hello = Digest::of(b"hello\n").to_hex();
    assert_eq!(
        fs::read(m.mnt.join("blobs").join(&hello)).unwrap(),
        b"hello\n"
    );
    assert_eq!(
        fs::read(m.mnt.join("blobs").join(&hello[..8])).unwrap(),
        b"hello\n"
    );
    let blob_meta = fs::metadata(m.mnt.join("blobs").join(&hello)).unwrap();
    assert_eq!((blob_meta.len(), blob_meta.mode() & 0o7777), (6, 0o444));
    // A blob that is not a tree is no directory under /trees.
    enoent(m.mnt.join("trees").join(&hello));
}

#[test]
fn dags_runs_why_and_dagfs_files_show_the_live_index() {
    let m = setup();
    let key = m.key("build").to_hex();
    let dags = m.mnt.join("dags");
    assert_eq!(text(run("ls", &[&dags])), "app\n");
    assert_eq!(text(run("ls", &[&dags.join("app")])), "build\nreport\n");
    // A directory, not a link: `find`, `grep -r`, `du` walk it.
    let link = dags.join("app/build");
    assert!(fs::symlink_metadata(&link).unwrap().is_dir());
    assert_eq!(
        xattr(&link, "user.dagfs.key", 256, false),
        Ok(key.clone().into_bytes())
    );
    assert_eq!(fs::read(link.join("hello.txt")).unwrap(), b"hello\n");
    let found = text(run(
        "find",
        &[
            &dags.join("app"),
            &PathBuf::from("-type"),
            &PathBuf::from("f"),
        ],
    ));
    assert!(found.contains("/app/build/hello.txt"), "{found}");
    assert!(found.contains("/app/report/size.txt"), "{found}");
    assert_eq!(
        fs::read_to_string(dags.join("app/report/size.txt"))
            .unwrap()
            .trim(),
        "1048576"
    );

    let runs = m.view.runs().unwrap();
    assert_eq!(runs.len(), 1);
    let id = runs[0].to_string();
    let listed = text(run("ls", &[&m.mnt.join("runs")]));
    assert_eq!(listed, format!("{id}\nlatest\n"));
    assert_eq!(
        fs::read_link(m.mnt.join("runs/latest")).unwrap(),
        PathBuf::from(&id)
    );
    let run_task = m.mnt.join("runs").join(&id).join("build");
    assert!(fs::symlink_metadata(&run_task).unwrap().is_dir());
    assert_eq!(
        xattr(&run_task, "user.dagfs.key", 256, false),
        Ok(key.clone().into_bytes())
    );
    assert_eq!(
        fs::read(m.mnt.join("runs/latest/build/hello.txt")).unwrap(),
        b"hello\n"
    );

    let why = fs::read_to_string(m.mnt.join("why/app/build")).unwrap();
    assert!(why.contains("task     app/build"), "{why}");
    assert_eq!(
        text(run("ls", &[&m.mnt.join("why/app")])),
        "build\nreport\n"
    );
    // The size stat reports is that of the text (computed at getattr).
    assert_eq!(
        fs::metadata(m.mnt.join("why/app/build")).unwrap().len(),
        why.len() as u64
    );

    let stats = fs::read_to_string(m.mnt.join(".dagfs/stats")).unwrap();
    assert!(stats.contains("entries      2"), "{stats}");
    assert!(stats.contains("fs ops"), "{stats}");
    assert!(
        stats.contains("fs reads     passthrough") || stats.contains("fs reads     pread"),
        "{stats}"
    );
    let metrics = fs::read_to_string(m.mnt.join(".dagfs/metrics")).unwrap();
    assert!(metrics.contains("dagfs_entries"), "{metrics}");
    assert!(
        metrics.contains("dagfs_fs_requests_total{op=\"lookup\"}"),
        "{metrics}"
    );
    assert_eq!(
        text(run("ls", &[&m.mnt.join(".dagfs")])),
        "metrics\nstats\n"
    );
    assert_eq!(
        text(run("ls", &[&m.mnt])),
        "blobs\ndags\nkeys\nruns\nsyncs\ntrees\nwhy\n",
        "ls hides .dagfs"
    );

    // A second run while mounted shows up within the one-second TTL.
    let again = run_pipeline(&m.cache, &m.root);
    assert_eq!(again.executed(), 0, "second run is all hits");
    let new_id = again.run_id.to_string();
    assert_ne!(new_id, id);
    wait_until("/runs/latest to move", || {
        fs::read_link(m.mnt.join("runs/latest")).ok() == Some(PathBuf::from(&new_id))
    });
    assert!(m.mnt.join("runs").join(&new_id).join("report").exists());
}

#[test]
fn xattrs_tell_key_task_and_digest() {
    let m = setup();
    let key = m.key("build").to_hex();
    let k = m.kdir("build");
    let output = m.entry("build").output.to_hex();
    let hello = Digest::of(b"hello\n").to_hex();
    let get = |p: &Path, n: &str| xattr(p, n, 256, false).map(|v| String::from_utf8(v).unwrap());

    assert_eq!(get(&k, "user.dagfs.key"), Ok(key.clone()));
    assert_eq!(get(&k, "user.dagfs.task"), Ok("app/build".into()));
    assert_eq!(get(&k, "user.dagfs.digest"), Ok(output.clone()));
    let f = k.join("hello.txt");
    assert_eq!(get(&f, "user.dagfs.digest"), Ok(hello.clone()));
    assert_eq!(get(&f, "user.dagfs.key"), Ok(key.clone()));
    assert_eq!(get(&f, "user.dagfs.task"), Ok("app/build".into()));
    assert_eq!(get(&f, "user.nope"), Err(libc::ENODATA));
    let sub = k.join("src/deep");
    assert_eq!(get(&sub, "user.dagfs.key"), Ok(key.clone()));
    assert_eq!(get(&sub, "user.dagfs.digest").unwrap().len(), 64);

    // Size probe and ERANGE.
    assert_eq!(xattr(&f, "user.dagfs.digest", 0, false), Ok(b"64".to_vec()));
    assert_eq!(xattr(&f, "user.dagfs.digest", 10, false), Err(libc::ERANGE));

    // The dags and runs directories carry the entry's identity, down to
    // their files.
    let dag = m.mnt.join("dags/app/build");
    assert_eq!(get(&dag, "user.dagfs.key"), Ok(key.clone()));
    assert_eq!(get(&dag, "user.dagfs.task"), Ok("app/build".into()));
    assert_eq!(
        get(&dag.join("hello.txt"), "user.dagfs.task"),
        Ok("app/build".into())
    );
    assert_eq!(
        get(&m.mnt.join("runs/latest/build"), "user.dagfs.key"),
        Ok(key.clone())
    );

    // Outside /keys there is no key, but digests still.
    let tree = m.mnt.join("trees").join(&output);
    assert_eq!(get(&tree, "user.dagfs.digest"), Ok(output.clone()));
    assert_eq!(get(&tree, "user.dagfs.key"), Err(libc::ENODATA));
    assert_eq!(
        get(&tree.join("hello.txt"), "user.dagfs.digest"),
        Ok(hello.clone())
    );
    let blob = m.mnt.join("blobs").join(&hello);
    assert_eq!(get(&blob, "user.dagfs.digest"), Ok(hello.clone()));

    if !which("getfattr") {
        eprintln!("SKIP getfattr check: getfattr is not installed (apt-get install attr)");
    } else {
        let names = text(run(
            "getfattr",
            &[&"--absolute-names", &"-d", &"-m", &"user.dagfs", &k],
        ));
        for want in [
            format!("user.dagfs.key=\"{key}\""),
            "user.dagfs.task=\"app/build\"".to_string(),
            format!("user.dagfs.digest=\"{output}\""),
        ] {
            assert!(names.contains(&want), "getfattr lacks {want}:\n{names}");
        }
    }
}

fn which(prog: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {prog}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn a_directory_of_100000_files_lists_completely_once() {
    let m = setup_with(MANY, FsOptions::default(), plain);
    let d = m.kdir("many").join("d");
    let out = Command::new("sh")
        .arg("-c")
        .arg("ls -f | wc -l; ls -f | sort | uniq -d | wc -l; find . -type f | wc -l")
        .current_dir(&d)
        .output()
        .unwrap();
    assert!(out.status.success());
    let nums: Vec<u64> = text(out.stdout)
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    assert_eq!(nums, [100_002, 0, 100_000], "ls -f, duplicates, find");
    let names: BTreeSet<Vec<u8>> = fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().file_name().as_bytes().to_vec())
        .collect();
    assert_eq!(names.len(), 100_000);
    assert!(names.contains(b"f000001".as_slice()) && names.contains(b"f100000".as_slice()));
    assert_eq!(fs::metadata(d.join("f054321")).unwrap().len(), 0);
}

/// The kernel's dentry and inode caches are the whole machine's. A test
/// that drops them (`drop_caches`) holds this lock exclusively, and a test
/// whose assertions need the caches it warmed holds it shared: nextest runs
/// tests as parallel processes, and one test's drop landing inside
/// another's walk made the kernel forget what that one counted (CI: "6131
/// inodes live after find", while `inode_numbers_survive…` dropped).
fn kernel_caches(exclusive: bool) -> File {
    let path = std::env::temp_dir().join("dagfs-tests-kernel-caches.lock");
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap();
    let op = if exclusive {
        libc::LOCK_EX
    } else {
        libc::LOCK_SH
    };
    // SAFETY: flock on a descriptor we own.
    while unsafe { libc::flock(f.as_raw_fd(), op) } != 0 {
        let e = io::Error::last_os_error();
        assert_eq!(
            e.kind(),
            io::ErrorKind::Interrupted,
            "flock {}: {e}",
            path.display()
        );
    }
    f
}

#[test]
fn inode_numbers_survive_the_kernel_forgetting_them() {
    let _caches = kernel_caches(true);
    let m = setup();
    let k = m.kdir("build");
    let paths = [
        k.clone(),
        k.join("hello.txt"),
        k.join("src/deep/er/leaf.txt"),
        k.join("src/deep/up"),
        m.mnt.join("dags/app/build"),
        m.mnt.join("why/app/build"),
        m.mnt.join(".dagfs/stats"),
        m.mnt.join("keys"),
    ];
    let before: Vec<u64> = paths.iter().map(|p| ino(p)).collect();
    let distinct: BTreeSet<u64> = before.iter().copied().collect();
    assert_eq!(distinct.len(), paths.len());
    assert!(before.iter().all(|&i| i > 1));
    let live = m.counters.inodes_live.load(Ordering::Relaxed);
    assert!(live >= 7, "{live} inodes live");
    if fs::write("/proc/sys/vm/drop_caches", "2").is_err() {
        eprintln!("SKIP: /proc/sys/vm/drop_caches is not writable; cannot make the kernel forget");
        return;
    }
    wait_until("the kernel to forget inodes", || {
        let _ = fs::write("/proc/sys/vm/drop_caches", "2");
        m.counters.inodes_live.load(Ordering::Relaxed) < live
    });
    let after: Vec<u64> = paths.iter().map(|p| ino(p)).collect();
    assert_eq!(before, after);
}

/// Delegates to the real view, but panics when asked why `boom` ran.
struct PanicView(Arc<dyn StoreView>);

impl StoreView for PanicView {
    fn keys_after(&self, after: Option<&Digest>, max: usize) -> Result<Vec<Digest>, ViewError> {
        self.0.keys_after(after, max)
    }
    fn resolve_key(&self, p: &HexPrefix) -> Result<Option<Digest>, ViewError> {
        self.0.resolve_key(p)
    }
    fn entry(&self, key: &Digest) -> Result<Option<EntryInfo>, ViewError> {
        self.0.entry(key)
    }
    fn resolve_blob(&self, p: &HexPrefix) -> Result<Option<Digest>, ViewError> {
        self.0.resolve_blob(p)
    }
    fn read_tree(&self, t: &Digest) -> Result<Tree, ViewError> {
        self.0.read_tree(t)
    }
    fn is_tree(&self, d: &Digest) -> Result<bool, ViewError> {
        self.0.is_tree(d)
    }
    fn open_blob(&self, d: &Digest) -> std::io::Result<dagfs::fs::view::BlobData> {
        self.0.open_blob(d)
    }
    fn blob_size(&self, d: &Digest) -> Result<u64, ViewError> {
        self.0.blob_size(d)
    }
    fn dags(&self) -> Result<Vec<String>, ViewError> {
        self.0.dags()
    }
    fn tasks(&self, dag: &str) -> Result<Vec<(String, Digest)>, ViewError> {
        self.0.tasks(dag)
    }
    fn runs(&self) -> Result<Vec<u64>, ViewError> {
        self.0.runs()
    }
    fn run(&self, id: u64) -> Result<Option<RunInfo>, ViewError> {
        self.0.run(id)
    }
    fn why(&self, dag: &str, task: &str) -> Result<Option<String>, ViewError> {
        if task == "boom" {
            panic!("test panic in why({dag}, {task})");
        }
        if task == "corrupt" {
            return Err(ViewError::Corrupt(Digest::default()));
        }
        self.0.why(dag, task)
    }
    fn stats_text(&self) -> Result<String, ViewError> {
        self.0.stats_text()
    }
    fn metrics_text(&self) -> Result<String, ViewError> {
        self.0.metrics_text()
    }
}

#[test]
fn a_panicking_handler_answers_eio_and_the_mount_stays_up() {
    let m = setup_with(PIPELINE, FsOptions::default(), |v| Arc::new(PanicView(v)));
    let boom = m.mnt.join("why/app/boom");
    let panics = || m.counters.panics.load(Ordering::Relaxed);
    assert_eq!(errno_of(fs::metadata(&boom)), libc::EIO);
    // NB: the EIO goes out while the handler unwinds, the count right after.
    wait_until("the panic to be counted", || panics() == 1);
    assert_eq!(
        errno_of(fs::metadata(m.mnt.join("why/app/corrupt"))),
        libc::EIO
    );
    assert_eq!(panics(), 1, "Corrupt is no panic");
    assert!(m.counters.eio_count.load(Ordering::Relaxed) >= 2);
    // Still serving, and saying so.
    assert_eq!(
        fs::read(m.kdir("build").join("hello.txt")).unwrap(),
        b"hello\n"
    );
    let stats = fs::read_to_string(m.mnt.join(".dagfs/stats")).unwrap();
    assert!(stats.contains("1 panics"), "{stats}");
    assert_eq!(errno_of(fs::metadata(&boom)), libc::EIO);
    wait_until("the second panic to be counted", || panics() == 2);
}

#[test]
fn proc_mounts_shows_a_read_only_fuse_dagfs_mount() {
    let opts = FsOptions {
        fsname: "/some/store".into(),
        ..FsOptions::default()
    };
    let m = setup_with(PIPELINE, opts, plain);
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = mount_line(&info, &m.mnt).expect("in mountinfo").to_string();
    // <id> <parent> <dev> <root> <mnt> <opts> <optional...> - <type> <source> <super opts>
    let (pre, post) = line.split_once(" - ").unwrap();
    let mount_opts: BTreeSet<&str> = pre.split(' ').nth(5).unwrap().split(',').collect();
    for o in ["ro", "nosuid", "nodev", "noatime"] {
        assert!(mount_opts.contains(o), "{o} missing: {line}");
    }
    let mut post = post.split(' ');
    assert_eq!(post.next(), Some("fuse.dagfs"), "{line}");
    assert_eq!(post.next(), Some("/some/store"), "{line}");
    drop(m);
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!info.contains("/some/store"), "unmounted on drop");
}

fn read_both_ways(opts: FsOptions) -> (Mounted, String) {
    let m = setup_with(PIPELINE, opts, plain);
    let k = m.kdir("build");
    let want = fs::read(m.expected("build").join("big.bin")).unwrap();
    for _ in 0..2 {
        assert!(fs::read(k.join("big.bin")).unwrap() == want, "read differs");
        assert!(mmap_read(&k.join("big.bin")) == want, "mmap differs");
    }
    // Two opens at once of the same file.
    let a = File::open(k.join("hello.txt")).unwrap();
    let b = fs::read(k.join("hello.txt")).unwrap();
    assert_eq!(b, b"hello\n");
    drop(a);
    let stats = fs::read_to_string(m.mnt.join(".dagfs/stats")).unwrap();
    let line = stats
        .lines()
        .find(|l| l.starts_with("fs reads"))
        .expect("a reads line")
        .to_string();
    (m, line)
}

#[test]
fn reads_with_passthrough_off_use_pread() {
    let opts = FsOptions {
        passthrough: Passthrough::Off,
        ..FsOptions::default()
    };
    let (m, line) = read_both_ways(opts);
    assert!(
        line.contains("pread (passthrough turned off by option)"),
        "{line}"
    );
    assert_eq!(m.counters.passthrough_opens.load(Ordering::Relaxed), 0);
    assert!(m.counters.pread_opens.load(Ordering::Relaxed) >= 2);
    assert!(m.counters.bytes_read.load(Ordering::Relaxed) >= 1 << 20);
}

#[test]
fn reads_with_passthrough_auto_use_it_when_granted() {
    let (m, line) = read_both_ways(FsOptions::default());
    eprintln!("passthrough auto: {line}");
    let pt = m.counters.passthrough_opens.load(Ordering::Relaxed);
    let pr = m.counters.pread_opens.load(Ordering::Relaxed);
    if line.contains("fs reads     passthrough") {
        assert!(pt >= 2 && pr == 0, "{pt} passthrough, {pr} pread opens");
    } else {
        assert!(line.contains("pread ("), "{line}");
        assert!(pt == 0 && pr >= 2, "{pt} passthrough, {pr} pread opens");
    }
}

/// A store whose entries all have one output, a single directory level
/// of `n` empty files (built in memory: no task writes a million files
/// here). `keys` holds `key` and any number of other keys, ascending.
struct WideView {
    key: Digest,
    keys: Vec<Digest>,
    tree: Digest,
    n: usize,
}

impl StoreView for WideView {
    fn keys_after(&self, after: Option<&Digest>, max: usize) -> Result<Vec<Digest>, ViewError> {
        let from = after.map_or(0, |a| self.keys.partition_point(|k| k <= a));
        Ok(self.keys[from..].iter().take(max).copied().collect())
    }
    fn resolve_key(&self, p: &HexPrefix) -> Result<Option<Digest>, ViewError> {
        let (lo, _) = p.range();
        let from = self.keys.partition_point(|k| k.as_bytes() < &lo);
        let mut m = self.keys[from..].iter().take(2).filter(|k| p.matches(k));
        Ok(match (m.next(), m.next()) {
            (Some(k), None) => Some(*k),
            _ => None,
        })
    }
    fn entry(&self, key: &Digest) -> Result<Option<EntryInfo>, ViewError> {
        Ok(self.keys.binary_search(key).is_ok().then(|| EntryInfo {
            key: *key,
            output: self.tree,
            dag: "wide".into(),
            task: "t".into(),
            created_ms: 1_700_000_000_000,
        }))
    }
    fn resolve_blob(&self, _: &HexPrefix) -> Result<Option<Digest>, ViewError> {
        Ok(None)
    }
    fn read_tree(&self, t: &Digest) -> Result<Tree, ViewError> {
        if *t != self.tree {
            return Err(ViewError::NotFound);
        }
        let empty = Digest::of(b"");
        let entries = (0..self.n)
            .map(|i| dagfs::store::tree::TreeEntry {
                name: format!("f{i:07}").into_bytes(),
                node: dagfs::store::tree::Node::File {
                    size: 0,
                    digest: empty,
                    exec: false,
                },
            })
            .collect();
        Ok(Tree { entries })
    }
    fn is_tree(&self, d: &Digest) -> Result<bool, ViewError> {
        Ok(*d == self.tree)
    }
    fn open_blob(&self, _: &Digest) -> std::io::Result<dagfs::fs::view::BlobData> {
        Err(std::io::ErrorKind::NotFound.into())
    }
    fn blob_size(&self, _: &Digest) -> Result<u64, ViewError> {
        Ok(0)
    }
    fn dags(&self) -> Result<Vec<String>, ViewError> {
        Ok(vec![])
    }
    fn tasks(&self, _: &str) -> Result<Vec<(String, Digest)>, ViewError> {
        Ok(vec![])
    }
    fn runs(&self) -> Result<Vec<u64>, ViewError> {
        Ok(vec![])
    }
    fn run(&self, _: u64) -> Result<Option<RunInfo>, ViewError> {
        Ok(None)
    }
    fn why(&self, _: &str, _: &str) -> Result<Option<String>, ViewError> {
        Ok(None)
    }
    fn stats_text(&self) -> Result<String, ViewError> {
        Ok(String::new())
    }
    fn metrics_text(&self) -> Result<String, ViewError> {
        Ok(String::new())
    }
}

/// A mount of a `WideView` of `n` files.
struct Wide {
    _mount: Unmount,
    /// The directory of `n` files.
    dir: PathBuf,
    root: PathBuf,
    counters: Arc<FsCounters>,
    _tmp: tempfile::TempDir,
}

fn mount_wide(n: usize) -> Wide {
    mount_wide_keys(n, 0)
}

/// As `mount_wide`, with `extra` more keys listed under `/keys`.
fn mount_wide_keys(n: usize, extra: usize) -> Wide {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().canonicalize().unwrap();
    let mnt = root.join("mnt");
    fs::create_dir(&mnt).unwrap();
    let key = Digest::of(b"wide key");
    let mut keys: Vec<Digest> = (0..extra as u64)
        .map(|i| Digest::of(&i.to_le_bytes()))
        .chain([key])
        .collect();
    keys.sort();
    let view = WideView {
        key,
        keys,
        tree: Digest::of(b"wide tree"),
        n,
    };
    let dir = mnt.join("keys").join(view.key.to_hex());
    let opts = FsOptions::default();
    let counters = Arc::new(FsCounters::default());
    let fs = DagFs::new(Arc::new(view), &opts, counters.clone());
    let session = mount(fs, &mnt, &opts).expect("mount");
    let w = Wide {
        _mount: Unmount(Some(session), mnt.clone()),
        dir,
        root,
        counters,
        _tmp: tmp,
    };
    wait_until("the mount", || fs::metadata(mnt.join("keys")).is_ok());
    w
}

#[test]
fn a_tree_of_a_million_entries_streams_without_gaps_or_duplicates() {
    const N: usize = 1_000_000;
    let w = mount_wide(N);
    let list = w.root.join("list");
    let script = format!(
        "ls -f '{}' > '{}' && wc -l < '{1}' && sort '{1}' | uniq -d | wc -l",
        w.dir.display(),
        list.display()
    );
    let nums: Vec<usize> = text(run("sh", &[&"-c", &script]))
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    assert_eq!(nums, [N + 2, 0], "entries listed, duplicates");
    let last = format!("f{:07}", N - 1);
    assert_eq!(fs::metadata(w.dir.join(&last)).unwrap().len(), 0);
    assert_eq!(fs::read(w.dir.join(&last)).unwrap(), b"");
}

#[test]
fn keys_list_a_page_at_a_time_without_gaps_or_duplicates() {
    const N: usize = 200_000;
    let w = mount_wide_keys(1, N - 1);
    let keys = w.root.join("mnt/keys");
    let list = w.root.join("list");
    let script = format!(
        "ls -f '{}' > '{}' && wc -l < '{1}' && sort '{1}' | uniq -d | wc -l",
        keys.display(),
        list.display()
    );
    let nums: Vec<usize> = text(run("sh", &[&"-c", &script]))
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    assert_eq!(nums, [N + 2, 0], "entries listed, duplicates");
    // Listed names are the keys, each one resolving.
    let listed = fs::read_to_string(&list).unwrap();
    let mut names: Vec<&str> = listed.lines().filter(|l| !l.starts_with('.')).collect();
    names.sort();
    let mut want: Vec<String> = (0..(N - 1) as u64)
        .map(|i| Digest::of(&i.to_le_bytes()).to_hex())
        .chain([Digest::of(b"wide key").to_hex()])
        .collect();
    want.sort();
    assert_eq!(names, want);
    assert!(fs::metadata(keys.join(names[N / 2]).join("f0000000")).is_ok());
    // Readers at different positions at once (Python's scandir, in
    // several processes) each see every key once.
    let py = format!(
        "import os,sys\nfrom concurrent.futures import ProcessPoolExecutor as P\n\
         def n(_):\n    s=[e.name for e in os.scandir('{}')]\n    return len(s),len(set(s))\n\
         with P(3) as p: print(list(p.map(n, range(3))))\n",
        keys.display()
    );
    let out = text(run("python3", &[&"-c", &py]));
    assert_eq!(out.trim(), format!("[({N}, {N}), ({N}, {N}), ({N}, {N})]"));
}

#[test]
fn forgotten_inodes_free_their_memory() {
    let _caches = kernel_caches(true);
    let w = mount_wide(100_000);
    // lstat every file: 100,000 lookups, each an inode the kernel holds.
    run("find", &[&w.dir, &"-type", &"f", &"-size", &"+0"]);
    let live = w.counters.inodes_live.load(Ordering::Relaxed);
    assert!(live > 50_000, "{live} inodes live after find");
    if fs::write("/proc/sys/vm/drop_caches", "2").is_err() {
        eprintln!("SKIP: /proc/sys/vm/drop_caches is not writable; cannot make the kernel forget");
        return;
    }
    wait_until("forget to drop most inodes", || {
        let _ = fs::write("/proc/sys/vm/drop_caches", "2");
        w.counters.inodes_live.load(Ordering::Relaxed) < 1000
    });
}

/// Every FUSE request the daemon served so far.
fn requests(c: &FsCounters) -> u64 {
    [
        &c.lookup,
        &c.getattr,
        &c.readdir,
        &c.open,
        &c.read,
        &c.readlink,
        &c.getxattr,
        &c.other,
    ]
    .iter()
    .map(|a| a.load(Ordering::Relaxed))
    .sum()
}

/// 2,000 small files in four directories.
const MIDDLE: &str = r#"
name = "middle"

[tasks.files]
run = '''
set -e
for d in a b c d; do
  mkdir "$DAGFS_OUT/$d"
  for i in $(seq 1 500); do echo "$d $i" > "$DAGFS_OUT/$d/f$i"; done
done
'''
"#;

#[test]
fn warm_walks_and_reads_make_no_requests_per_file() {
    let _caches = kernel_caches(false);
    let m = setup_with(MIDDLE, FsOptions::default(), plain);
    let k = m.kdir("files");
    let walk = || {
        let out = Command::new("sh")
            .arg("-c")
            .arg(
                "ls -lR >/dev/null && find . >/dev/null && du -s . >/dev/null && \
                 find . -type f -exec cat {} + >/dev/null && tar cf - . | cat >/dev/null",
            )
            .current_dir(&k)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    walk();
    let before = requests(&m.counters);
    walk();
    walk();
    let n = requests(&m.counters) - before;
    // NB: a few per process (ls asks for one file's security.* attributes
    // before it stops, and so on), none per file or directory: the kernel
    // keeps listings, attributes and pages, and sends no open or flush.
    assert!(
        n < 60,
        "{n} requests for two warm walks of 2,000 files: {}",
        m.counters.to_text()
    );
    assert!(
        m.counters.open.load(Ordering::Relaxed) <= 2,
        "opens: {}",
        m.counters.to_text()
    );
}

#[test]
fn listings_carry_attributes_and_ls_l_asks_for_no_xattrs() {
    let _caches = kernel_caches(false);
    let m = setup_with(MANY, FsOptions::default(), plain);
    let d = m.kdir("many").join("d");
    run("ls", &[&"-l", &d]);
    let lookups = m.counters.lookup.load(Ordering::Relaxed);
    // NB: readdirplus (adaptive): the kernel asks for attributes with the
    // names once `ls -l` stats what it listed: far fewer than 100,000
    // lookups.
    assert!(
        lookups < 20_000,
        "{lookups} lookups for ls -l of 100,000 files"
    );
    let x = m.counters.getxattr.load(Ordering::Relaxed);
    assert!(x < 10, "{x} getxattr requests: ls -l should stop asking");
    let f = d.join("f000001");
    assert_eq!(
        xattr(&f, "security.selinux", 256, false),
        Err(libc::EOPNOTSUPP)
    );
    assert_eq!(
        xattr(&f, "system.posix_acl_access", 256, false),
        Err(libc::EOPNOTSUPP)
    );
    assert_eq!(xattr(&f, "user.nope", 256, false), Err(libc::ENODATA));
}

#[test]
fn generated_files_are_consistent_per_reader_and_fresh_for_the_next() {
    let m = setup();
    let stats = m.mnt.join(".dagfs/stats");
    let lookups = |t: &str| -> u64 {
        let line = t.lines().find(|l| l.starts_with("fs ops")).expect("fs ops");
        line.split(", ")
            .next()
            .unwrap()
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    // Read through in small pieces: one text, whole, as its size says.
    let mut f = File::open(&stats).unwrap();
    let size = f.metadata().unwrap().len() as usize;
    let mut got = Vec::new();
    let mut buf = [0u8; 7];
    loop {
        let n = io::Read::read(&mut f, &mut buf).unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    let first = String::from_utf8(got).unwrap();
    assert_eq!(first.len(), size, "{first}");
    assert_eq!(first.matches("fs ops").count(), 1, "{first}");
    assert!(first.ends_with('\n'));
    // Lookups made meanwhile show at the next read (of a process of its own,
    // or of this one once it paused).
    for i in 0..20 {
        let _ = fs::metadata(m.kdir("build").join(format!("nope-{i}")));
    }
    let other = text(run("cat", &[&stats]));
    assert!(
        lookups(&other) >= lookups(&first) + 20,
        "{first}\n---\n{other}"
    );
    std::thread::sleep(Duration::from_millis(100));
    let again = fs::read_to_string(&stats).unwrap();
    assert!(lookups(&again) >= lookups(&other), "{other}\n---\n{again}");
    assert_ne!(again, first);
}

#[test]
fn live_listings_show_new_keys_within_the_ttl() {
    let m = setup();
    let listed = || fs::read_dir(m.mnt.join("keys")).unwrap().count();
    assert_eq!(listed(), 2);
    let dags = || text(run("ls", &[&m.mnt.join("dags/app")]));
    assert_eq!(dags(), "build\nreport\n");
    // A new task, run without the daemon (no invalidation): the listings
    // follow within the live views' one-second TTL.
    let more = format!("{PIPELINE}\n[tasks.extra]\nrun = 'echo extra > \"$DAGFS_OUT/x\"'\n");
    fs::write(m.root.join("dagfs.toml"), more).unwrap();
    run_pipeline(&m.cache, &m.root);
    wait_until("the new key under /keys", || listed() == 3);
    wait_until("the new task under /dags/app", || {
        dags() == "build\nextra\nreport\n"
    });
}

#[test]
fn reads_with_passthrough_on_use_it_when_granted() {
    let opts = FsOptions {
        passthrough: Passthrough::On,
        ..FsOptions::default()
    };
    let (m, line) = read_both_ways(opts);
    eprintln!("passthrough on: {line}");
    let pt = m.counters.passthrough_opens.load(Ordering::Relaxed);
    let pr = m.counters.pread_opens.load(Ordering::Relaxed);
    if line.contains("fs reads     passthrough") {
        assert!(pt >= 2 && pr == 0, "{pt} passthrough, {pr} pread opens");
        // Opens reach the daemon: one per open(2) of a stored file.
        assert!(m.counters.open.load(Ordering::Relaxed) >= 5);
    } else {
        assert!(line.contains("pread ("), "{line}");
        assert!(pt == 0 && pr >= 2, "{pt} passthrough, {pr} pread opens");
    }
    // Generated files are opened too, on a snapshot.
    let why = fs::read_to_string(m.mnt.join("why/app/build")).unwrap();
    assert!(why.contains("task     app/build"), "{why}");
    assert_eq!(
        fs::metadata(m.mnt.join("why/app/build")).unwrap().len(),
        why.len() as u64
    );
}
