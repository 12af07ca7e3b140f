//! A store on a read-only filesystem (a CVMFS-like distribution, a
//! read-only export): reading commands and `mount` work, writing commands
//! say why they cannot. The read-only store is a `mount -o remount,bind,ro`
//! of a store made here (needs root); every mount is undone on every path.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;

use common::{dagfs, is_dagfs_mount, text, Mounted};

/// A read-only bind mount of a directory, unmounted on drop.
struct ReadOnlyBind(PathBuf);

impl ReadOnlyBind {
    fn new(src: &Path, at: &Path) -> Option<ReadOnlyBind> {
        fs::create_dir_all(at).unwrap();
        let ok = |c: &mut Command| c.status().is_ok_and(|s| s.success());
        if !ok(Command::new("mount").arg("--bind").arg(src).arg(at)) {
            return None;
        }
        let bind = ReadOnlyBind(at.to_path_buf());
        if !ok(Command::new("mount")
            .args(["-o", "remount,bind,ro"])
            .arg(at))
        {
            return None;
        }
        Some(bind)
    }
}

impl Drop for ReadOnlyBind {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn run(store: &Path, args: &[&str]) -> Output {
    dagfs(store, args).output().unwrap()
}

/// Regression: a store on a read-only filesystem could not even answer
/// `stats`, `ls` or `cat` (they wrote `lock`), nor be mounted.
#[test]
fn reading_commands_and_mount_work_on_a_read_only_store() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (store, ro) = (root.join("store"), root.join("ro"));
    let p = root.join("p");
    fs::create_dir_all(p.join("data")).unwrap();
    fs::write(p.join("data/in.txt"), "input\n").unwrap();
    fs::write(
        p.join("dagfs.toml"),
        "name = \"p\"\n[tasks.a]\ninputs = [\"data/\"]\nrun = \"cat $DAGFS_INPUTS/data/in.txt > $DAGFS_OUT/a.txt\"\n",
    )
    .unwrap();
    let file = p.join("dagfs.toml");
    let file = file.to_str().unwrap();
    let o = run(&store, &["run", "-f", file]);
    assert!(o.status.success(), "{}", text(&o));
    let o = run(
        &store,
        &["sync", p.join("data").to_str().unwrap(), "--name", "d"],
    );
    assert!(o.status.success(), "{}", text(&o));

    let Some(_bind) = ReadOnlyBind::new(&store, &ro) else {
        eprintln!("skipping: cannot make a read-only bind mount (needs root)");
        return;
    };
    assert!(
        fs::write(ro.join("probe"), "").is_err(),
        "the bind mount is writable"
    );

    let ok = |args: &[&str]| {
        let o = run(&ro, args);
        assert!(
            o.status.success(),
            "dagfs {args:?} on a read-only store: {}",
            text(&o)
        );
        String::from_utf8(o.stdout).unwrap()
    };
    assert!(ok(&["stats"]).contains("entries      1"));
    assert!(ok(&["stats", "--json"]).contains("\"total_entries\": 1"));
    assert!(ok(&["ls"]).contains("p/a"));
    assert_eq!(ok(&["cat", "p/a/a.txt"]), "input\n");
    assert_eq!(ok(&["cat", "d@1/in.txt"]), "input\n");
    assert!(ok(&["explain", "-f", file, "a"]).contains("cached: the next run is a hit"));
    assert!(ok(&["sync", "--list"]).contains("d@1"));

    for args in [
        &["run", "-f", file][..],
        &["gc"],
        &["config", "ttl", "1d"],
        &["sync", p.join("data").to_str().unwrap()],
        &["fsck", "--repair"],
    ] {
        let o = run(&ro, args);
        assert_eq!(o.status.code(), Some(8), "{args:?}: {}", text(&o));
        assert!(
            text(&o).contains("cannot be written"),
            "{args:?}: {}",
            text(&o)
        );
    }

    // Read again (as on another machine, where the stat cache vouches for
    // nothing) but unchanged: its content is stored, so nothing is written.
    fs::File::options()
        .write(true)
        .open(p.join("data/in.txt"))
        .unwrap()
        .set_modified(std::time::SystemTime::now())
        .unwrap();
    assert!(ok(&["explain", "-f", file, "a"]).contains("cached: the next run is a hit"));
    // An input changed since: keying it would store its snapshot.
    fs::write(p.join("data/in.txt"), "changed\n").unwrap();
    let o = run(&ro, &["explain", "-f", file, "a"]);
    assert_eq!(o.status.code(), Some(8), "{}", text(&o));
    assert!(text(&o).contains("cannot be written"), "{}", text(&o));

    let mnt = root.join("mnt");
    let m = Mounted::new(&ro, &mnt);
    assert_eq!(
        fs::read_to_string(mnt.join("dags/p/a/a.txt")).unwrap(),
        "input\n"
    );
    assert!(
        ok(&["ls"]).contains("p/a"),
        "commands work while it is mounted"
    );
    let other = root.join("mnt2");
    fs::create_dir_all(&other).unwrap();
    let o = run(&ro, &["mount", other.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(12), "{}", text(&o));
    assert!(text(&o).contains("store already served"), "{}", text(&o));
    let o = run(&ro, &["umount", mnt.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(!is_dagfs_mount(&mnt));
    common::wait_for("the daemon to stop with its mount", || {
        !common::pid_alive(m.pid)
    });
    drop(m);
}
