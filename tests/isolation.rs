//! Task isolation (issue 13): a task cannot write what its dependents read,
//! be handed damaged bytes, leave a process that rewrites a stored blob, or
//! reach the store. Each repro of the issue, as root and (through
//! `setpriv`, in a user namespace) as `nobody`, embedded and through the
//! daemon. Skips what the kernel here does not allow, saying so.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::{text, Mounted, Sandbox, BIN};

/// How to run dagfs: as this user, or as `nobody`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum As {
    Me,
    Nobody,
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Whether `nobody` can run tasks isolated here (setpriv present, user
/// namespaces allowed).
fn nobody_can_isolate() -> bool {
    is_root()
        && Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "unshare",
                "--user",
                "--mount",
                "--pid",
                "--fork",
                "true",
            ])
            .output()
            .is_ok_and(|o| o.status.success())
}

struct Sb {
    sb: Sandbox,
    who: As,
}

/// The shared `Sandbox` (its `root`, `store`), with what this file adds.
impl std::ops::Deref for Sb {
    type Target = Sandbox;
    fn deref(&self) -> &Sandbox {
        &self.sb
    }
}

impl Sb {
    fn new(who: As, toml: &str) -> Sb {
        let sb = Sandbox::new();
        let root = sb.root.clone();
        fs::set_permissions(&root, fs::Permissions::from_mode(0o777)).unwrap();
        let p = root.join("p");
        fs::create_dir(&p).unwrap();
        fs::write(p.join("dagfs.toml"), toml).unwrap();
        fs::write(p.join("data.txt"), "original\n").unwrap();
        if who == As::Nobody {
            for d in [&root, &p] {
                nix::unistd::chown(d.as_path(), Some(65534.into()), Some(65534.into())).unwrap();
            }
            nix::unistd::chown(&p.join("data.txt"), Some(65534.into()), Some(65534.into()))
                .unwrap();
            nix::unistd::chown(
                &p.join("dagfs.toml"),
                Some(65534.into()),
                Some(65534.into()),
            )
            .unwrap();
        }
        Sb { sb, who }
    }

    fn dagfs(&self, args: &[&str]) -> Output {
        let mut c = match self.who {
            As::Me => Command::new(BIN),
            As::Nobody => {
                let mut c = Command::new("setpriv");
                c.args(["--reuid=65534", "--regid=65534", "--clear-groups", BIN]);
                c
            }
        };
        c.arg("--store")
            .arg(&self.store)
            .args(args)
            .current_dir(self.root.join("p"))
            .env_remove("DAGFS_STORE")
            .env_remove("DAGFS_ISOLATION")
            .stdin(Stdio::null());
        c.output().unwrap()
    }

    fn run(&self) -> Output {
        self.dagfs(&["run", "-j1", "-v"])
    }

    fn cat(&self, r: &str) -> String {
        let o = self.dagfs(&["cat", r]);
        assert!(o.status.success(), "cat {r}: {}", text(&o));
        String::from_utf8(o.stdout).unwrap()
    }

    fn fsck_clean(&self) {
        let o = self.dagfs(&["fsck"]);
        assert!(o.status.success(), "fsck: {}", text(&o));
    }
}

fn who_all() -> Vec<As> {
    let mut v = vec![As::Me];
    if nobody_can_isolate() {
        v.push(As::Nobody);
    } else {
        eprintln!("SKIP the non-root half: needs root, setpriv and user namespaces");
    }
    v
}

const WRITERS: &str = r#"
name = "p"
[tasks.b1]
run = "echo CORRUPT > $DAGFS_INPUTS/data.txt; chmod u+w $DAGFS_INPUTS/data.txt; echo CORRUPT > $DAGFS_INPUTS/data.txt; echo done > $DAGFS_OUT/x"
inputs = ["data.txt"]
[tasks.b2]
run = "cat $DAGFS_INPUTS/data.txt > $DAGFS_OUT/y; chmod -R u+w $DAGFS_IN/b1 2>/dev/null; echo CORRUPT > $DAGFS_IN/b1/x; true"
inputs = ["data.txt"]
deps = ["b1"]
[tasks.b3]
run = "cat $DAGFS_INPUTS/data.txt $DAGFS_IN/b1/x > $DAGFS_OUT/z"
inputs = ["data.txt"]
deps = ["b1", "b2"]
"#;

/// Regression (issue 13.1): `$DAGFS_INPUTS/<path>` and `$DAGFS_IN/<dep>`
/// were shared copies a task could write (root through 0444, an owner
/// after chmod), changing what its dependents read under keys that claim
/// the originals.
#[test]
fn a_task_cannot_write_what_its_dependents_read() {
    for who in who_all() {
        let sb = Sb::new(who, WRITERS);
        let o = sb.run();
        assert!(o.status.success(), "{who:?}: {}", text(&o));
        assert!(
            text(&o).contains("Read-only file system"),
            "{who:?}: {}",
            text(&o)
        );
        assert_eq!(sb.cat("p/b2/y"), "original\n", "{who:?}");
        assert_eq!(sb.cat("p/b3/z"), "original\ndone\n", "{who:?}");
        assert_eq!(
            fs::read_to_string(sb.root.join("p/data.txt")).unwrap(),
            "original\n"
        );
        sb.fsck_clean();
    }
}

/// Regression (issue 13.2): a bit flipped in a dependency's blob was copied
/// into `$DAGFS_IN` unchecked, and the dependent cached what it made of
/// the bad bytes under the good key.
#[test]
fn a_damaged_dependency_is_never_handed_to_a_task() {
    let toml = |v: &str| {
        format!(
            "name = \"p\"\n[tasks.a]\nrun = \"echo payload-of-a > $DAGFS_OUT/f\"\n[tasks.b]\nrun = \"cat $DAGFS_IN/a/f > $DAGFS_OUT/g\"\ndeps = [\"a\"]\nversion = \"{v}\"\n"
        )
    };
    let sb = Sb::new(As::Me, &toml("1"));
    let o = sb.run();
    assert!(o.status.success(), "{}", text(&o));
    // Flip a bit of a's stored file.
    let d = blake3::hash(b"payload-of-a\n").to_hex().to_string();
    let blob = sb.store.join("blobs").join(&d[..2]).join(&d);
    let mut bytes = fs::read(&blob).unwrap();
    bytes[0] ^= 1;
    fs::set_permissions(&blob, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(&blob, &bytes).unwrap();
    // b runs again (new version) and must not be given the bad bytes.
    fs::write(sb.root.join("p/dagfs.toml"), toml("2")).unwrap();
    let o = sb.run();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("damaged") && t.contains(&d), "{t}");
    // Nothing of b's failed run is cached: after repair, b runs and reads
    // a's real bytes.
    let o = sb.dagfs(&["fsck", "--repair"]);
    assert_eq!(o.status.code(), Some(19), "{}", text(&o));
    let o = sb.run();
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(sb.cat("p/b/g"), "payload-of-a\n");
    sb.fsck_clean();
}

const ESCAPE: &str = r#"
name = "p"
[tasks.bg]
run = "echo start > $DAGFS_OUT/g; setsid sh -c 'exec 3>>\"$DAGFS_OUT/g\"; for i in $(seq 1 50); do echo $i >&3; sleep 0.01; done' </dev/null >/dev/null 2>&1 & sleep 0.05"
"#;

/// Regression (issue 13.3): a process a task started with `setsid` and an
/// open output file kept writing into the blob ingest had renamed into the
/// store (51 lines, `corrupt-blob`).
#[test]
fn no_process_of_a_task_outlives_it() {
    for who in who_all() {
        let sb = Sb::new(who, ESCAPE);
        let o = sb.run();
        assert!(o.status.success(), "{who:?}: {}", text(&o));
        let first = sb.cat("p/bg/g");
        assert!(first.starts_with("start\n"), "{first}");
        std::thread::sleep(std::time::Duration::from_millis(700));
        assert_eq!(sb.cat("p/bg/g"), first, "{who:?}: the stored file changed");
        assert!(
            first.lines().count() < 51,
            "{who:?}: the writer ran to the end"
        );
        sb.fsck_clean();
    }
}

const EVIL: &str = r#"
name = "p"
[tasks.evil]
run = 'd=$DAGFS_OUT; while [ ! -e "$d/FORMAT" ]; do d="$d/.."; done; for f in $(find "$d/blobs" "$d/entries" -type f); do chmod u+w "$f"; echo EVIL >> "$f"; done; echo x > "$d/blobs/evil"; rm -rf "$d/index"; echo ok > $DAGFS_OUT/o'
[tasks.victim]
run = "echo victim-bytes > $DAGFS_OUT/v"
"#;

fn evil_repro(sb: &Sb, o: Output) {
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("Read-only file system"), "{}", text(&o));
    assert!(!sb.store.join("blobs/evil").exists());
    assert!(sb.store.join("index").exists());
    assert_eq!(sb.cat("p/victim/v"), "victim-bytes\n");
    sb.fsck_clean();
}

/// Regression (issue 13.4): `$DAGFS_OUT/../../../../blobs` was writable by
/// the task.
#[test]
fn the_store_is_out_of_a_tasks_reach() {
    for who in who_all() {
        // victim first, so its blob exists when evil runs.
        let sb = Sb::new(who, EVIL);
        let o = sb.dagfs(&["run", "-j1", "-v", "victim"]);
        assert!(o.status.success(), "{}", text(&o));
        evil_repro(&sb, sb.run());
    }
}

/// The same, with the daemon running the task (as the issue tested it).
#[test]
fn the_store_is_out_of_reach_of_a_task_the_daemon_runs() {
    if !Path::new("/dev/fuse").exists() {
        eprintln!("SKIP: needs /dev/fuse");
        return;
    }
    let sb = Sb::new(As::Me, EVIL);
    let mnt = sb.root.join("mnt");
    let m = Mounted::new(&sb.store, &mnt);
    let o = sb.dagfs(&["run", "-j1", "-v", "victim"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = sb.run();
    let served = fs::read_to_string(mnt.join("dags/p/victim/v")).unwrap();
    assert_eq!(served, "victim-bytes\n");
    evil_repro(&sb, o);
    drop(m);
}

/// Issue 13: `dagfs cat` verifies what it prints (as the mount does), and
/// never follows a symlink planted where a blob should be.
#[test]
fn cat_prints_only_verified_bytes_and_never_follows_a_planted_link() {
    let sb = Sb::new(
        As::Me,
        "name = \"p\"\n[tasks.a]\nrun = \"echo first-file > $DAGFS_OUT/f; echo second-file > $DAGFS_OUT/g\"\n",
    );
    let o = sb.run();
    assert!(o.status.success(), "{}", text(&o));
    let blob = |content: &[u8]| {
        let d = blake3::hash(content).to_hex().to_string();
        sb.store.join("blobs").join(&d[..2]).join(&d)
    };
    // A flipped bit: nothing printed, a store error naming the blob.
    let f = blob(b"first-file\n");
    let mut bytes = fs::read(&f).unwrap();
    bytes[0] ^= 1;
    fs::set_permissions(&f, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(&f, &bytes).unwrap();
    let o = sb.dagfs(&["cat", "p/a/f"]);
    assert_eq!(o.status.code(), Some(8), "{}", text(&o));
    assert!(o.stdout.is_empty(), "printed {:?}", o.stdout);
    assert!(text(&o).contains("corrupt"), "{}", text(&o));
    // A link planted in the store is not followed.
    let secret = sb.root.join("secret");
    fs::write(&secret, "do-not-print\n").unwrap();
    let g = blob(b"second-file\n");
    fs::remove_file(&g).unwrap();
    std::os::unix::fs::symlink(&secret, &g).unwrap();
    let o = sb.dagfs(&["cat", "p/a/g"]);
    assert_eq!(o.status.code(), Some(8), "{}", text(&o));
    assert!(!text(&o).contains("do-not-print"), "{}", text(&o));
}

/// Issue 13: a task reading its declared inputs in place (from its working
/// directory, as hello-c does) reads the snapshot its key names: an edit
/// made on the host while it runs is not seen, and it cannot write them.
#[test]
fn inputs_read_in_place_are_the_snapshot_the_key_names() {
    let sb = Sb::new(
        As::Me,
        r#"
name = "p"
[tasks.slow]
run = "touch started; while [ ! -e go ]; do sleep 0.01; done; cat data.txt > $DAGFS_OUT/o; (echo CORRUPT > data.txt) 2>/dev/null; true"
inputs = ["data.txt"]
"#,
    );
    let p = sb.root.join("p");
    let child = {
        let mut c = Command::new(BIN);
        c.arg("--store")
            .arg(&sb.store)
            .args(["run", "-v"])
            .current_dir(&p)
            .env_remove("DAGFS_ISOLATION")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c.spawn().unwrap()
    };
    common::wait_for("the task to start", || p.join("started").exists());
    // Edited on the host after it was hashed, while the task runs.
    fs::write(p.join("data.txt"), "edited\n").unwrap();
    fs::write(p.join("go"), "").unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        sb.cat("p/slow/o"),
        "original\n",
        "the task read what its key names"
    );
    assert_eq!(fs::read_to_string(p.join("data.txt")).unwrap(), "edited\n");
}
