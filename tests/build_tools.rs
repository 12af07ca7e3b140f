//! make and cargo reading through the mount: they rebuild exactly when the
//! content they read changes, and never otherwise, also across remounts
//! (the mtimes of `/syncs` and `/dags`; see `fs::ops`). These run the real
//! tools. Needs /dev/fuse (skips without it).

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use common::{dagfs, text, wait_for, Mounted, Sandbox};

fn fuse_available() -> bool {
    Path::new("/dev/fuse").exists()
}

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `common::env` with its mount point made.
fn env() -> Sandbox {
    let e = common::env();
    fs::create_dir_all(&e.mnt).unwrap();
    e
}

fn ok(o: Output, what: &str) -> String {
    assert!(o.status.success(), "{what} failed: {}", text(&o));
    text(&o)
}

fn sync(e: &Sandbox, dir: &Path, name: &str) {
    ok(
        dagfs(&e.store, &["sync", dir.to_str().unwrap(), "--name", name])
            .output()
            .unwrap(),
        "dagfs sync",
    );
}

fn make(dir: &Path) -> String {
    ok(
        Command::new("make").current_dir(dir).output().unwrap(),
        "make",
    )
}

/// The mount shows `want` at `path` (a new snapshot takes up to the live
/// views' one-second entry TTL to appear).
fn wait_content(path: &Path, want: &str) {
    wait_for(&format!("{path:?} to read {want:?}"), || {
        fs::read_to_string(path).is_ok_and(|t| t == want)
    });
}

/// Regression (issue 11.1): files under /syncs carried the daemon's start
/// time, so an edit synced in was never rebuilt and every remount rebuilt
/// everything.
#[test]
fn make_rebuilds_exactly_when_a_synced_file_changes() {
    if !fuse_available() || !have("make") || !have("cc") {
        eprintln!("SKIP: needs /dev/fuse, make and cc");
        return;
    }
    let e = env();
    let src = e.root.join("src");
    let work = e.root.join("work");
    fs::create_dir_all(&src).unwrap();
    fs::create_dir_all(&work).unwrap();
    let a_c = e.mnt.join("syncs/s/a.c");
    let v1 = "int f(void){return 1;}\n";
    fs::write(src.join("a.c"), v1).unwrap();
    let m = Mounted::new(&e.store, &e.mnt);
    sync(&e, &src, "s");
    fs::write(
        work.join("Makefile"),
        format!("a.o: {}\n\tcc -c $< -o $@\n", a_c.display()),
    )
    .unwrap();
    wait_content(&a_c, v1);
    assert!(make(&work).contains("cc -c"), "the first make builds");
    assert!(make(&work).contains("up to date"), "nothing changed");

    // An edit synced in is rebuilt.
    let v2 = format!("{v1}int g(void){{return 2;}}\n");
    fs::write(src.join("a.c"), &v2).unwrap();
    sync(&e, &src, "s");
    wait_content(&a_c, &v2);
    let out = make(&work);
    assert!(out.contains("cc -c"), "the edit is rebuilt: {out}");
    assert!(make(&work).contains("up to date"));

    // A touch (same content) and a sync of another file rebuild nothing.
    let f = fs::File::options()
        .append(true)
        .open(src.join("a.c"))
        .unwrap();
    f.set_modified(std::time::SystemTime::now()).unwrap();
    drop(f);
    fs::write(src.join("other.txt"), "x").unwrap();
    sync(&e, &src, "s");
    wait_content(&e.mnt.join("syncs/s/other.txt"), "x");
    let out = make(&work);
    assert!(
        out.contains("up to date"),
        "same content, no rebuild: {out}"
    );

    // Nor does a remount.
    drop(m);
    let m = Mounted::new(&e.store, &e.mnt);
    let out = make(&work);
    assert!(
        out.contains("up to date"),
        "a remount rebuilds nothing: {out}"
    );

    // An older snapshot keeps its own content and a stable time.
    let old = e.mnt.join("syncs/s@1/a.c");
    assert_eq!(fs::read_to_string(&old).unwrap(), v1);
    let t1 = fs::metadata(&old).unwrap().modified().unwrap();
    assert!(t1 < fs::metadata(&a_c).unwrap().modified().unwrap());
    drop(m);
}

/// Regression (issue 11.1): /dags/<dag>/<task> showed the entry's creation
/// time, so going back to an older cached output moved its mtime backwards
/// and make kept the newer, wrong file.
#[test]
fn make_rebuilds_when_a_task_goes_back_to_an_older_cached_output() {
    if !fuse_available() || !have("make") {
        eprintln!("SKIP: needs /dev/fuse and make");
        return;
    }
    let e = env();
    let p = e.root.join("pipe");
    let work = e.root.join("work");
    fs::create_dir_all(&p).unwrap();
    fs::create_dir_all(&work).unwrap();
    fs::write(
        p.join("dagfs.toml"),
        "name = \"app\"\n[tasks.gen]\nrun = \"cat in.txt > $DAGFS_OUT/out.txt\"\ninputs = [\"in.txt\"]\n",
    )
    .unwrap();
    let out = e.mnt.join("dags/app/gen/out.txt");
    fs::write(
        work.join("Makefile"),
        format!("copy.txt: {}\n\tcp $< $@\n", out.display()),
    )
    .unwrap();
    let run = |content: &str| {
        fs::write(p.join("in.txt"), content).unwrap();
        ok(
            dagfs(
                &e.store,
                &["run", "-f", p.join("dagfs.toml").to_str().unwrap()],
            )
            .output()
            .unwrap(),
            "dagfs run",
        );
        wait_content(&out, content);
    };
    let copied = || fs::read_to_string(work.join("copy.txt")).unwrap();
    let m = Mounted::new(&e.store, &e.mnt);
    run("one\n");
    make(&work);
    assert_eq!(copied(), "one\n");
    run("two\n");
    assert!(make(&work).contains("cp "));
    assert_eq!(copied(), "two\n");
    // Back to the first output: a cache hit on the older entry.
    run("one\n");
    let o = make(&work);
    assert!(o.contains("cp "), "back to an older output is rebuilt: {o}");
    assert_eq!(copied(), "one\n");
    // The same output again, or a remount: nothing to do.
    run("one\n");
    assert!(make(&work).contains("up to date"));
    drop(m);
    let m = Mounted::new(&e.store, &e.mnt);
    assert!(
        make(&work).contains("up to date"),
        "a remount rebuilds nothing"
    );
    // /runs/latest follows the same times.
    let via_runs = e.mnt.join("runs/latest/gen/out.txt");
    assert_eq!(
        fs::metadata(&via_runs).unwrap().modified().unwrap(),
        fs::metadata(&out).unwrap().modified().unwrap()
    );
    drop(m);
}

/// Regression (issue 11.1): `cargo build --manifest-path <mnt>/syncs/…`
/// reported `Finished` on a `lib.rs` containing `compile_error!`.
#[test]
fn cargo_rebuilds_a_synced_crate_exactly_when_it_changes() {
    if !fuse_available() {
        eprintln!("SKIP: needs /dev/fuse");
        return;
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let e = env();
    let src = e.root.join("crate");
    fs::create_dir_all(src.join("src")).unwrap();
    fs::write(
        src.join("Cargo.toml"),
        "[package]\nname = \"synced\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[workspace]\n",
    )
    .unwrap();
    let good = "pub fn f() -> u32 { 1 }\n";
    fs::write(src.join("src/lib.rs"), good).unwrap();
    let target = e.root.join("target");
    let cargo_cmd = |args: &[&str], dir: &Path| {
        let mut c = Command::new(&cargo);
        c.args(args)
            .arg("--offline")
            .current_dir(dir)
            .env("CARGO_TARGET_DIR", &target)
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("CARGO_BUILD_RUSTC_WRAPPER")
            .env_remove("RUSTC_WRAPPER");
        c.output().unwrap()
    };
    // The lock file goes along: the mount is read-only.
    ok(
        cargo_cmd(&["generate-lockfile"], &src),
        "cargo generate-lockfile",
    );
    let m = Mounted::new(&e.store, &e.mnt);
    sync(&e, &src, "c");
    let manifest = e.mnt.join("syncs/c/Cargo.toml");
    let lib = e.mnt.join("syncs/c/src/lib.rs");
    let build = || {
        cargo_cmd(
            &["build", "--manifest-path", manifest.to_str().unwrap()],
            &e.root,
        )
    };
    wait_content(&lib, good);
    let o = build();
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("Compiling synced"), "{}", text(&o));

    let bad = "compile_error!(\"edited\");\n";
    fs::write(src.join("src/lib.rs"), bad).unwrap();
    sync(&e, &src, "c");
    wait_content(&lib, bad);
    let o = build();
    assert!(
        !o.status.success(),
        "the edit must be compiled: {}",
        text(&o)
    );
    assert!(text(&o).contains("edited"), "{}", text(&o));

    let fixed = "pub fn f() -> u32 { 2 }\n";
    fs::write(src.join("src/lib.rs"), fixed).unwrap();
    sync(&e, &src, "c");
    wait_content(&lib, fixed);
    let o = build();
    assert!(o.status.success(), "{}", text(&o));
    let o = build();
    assert!(
        !text(&o).contains("Compiling"),
        "nothing changed: {}",
        text(&o)
    );
    drop(m);
    let m = Mounted::new(&e.store, &e.mnt);
    let o = build();
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        !text(&o).contains("Compiling"),
        "a remount rebuilds nothing: {}",
        text(&o)
    );
    drop(m);
}

/// Regression (issue 11.5): `/dags/<dag>/<task>` were symlinks, so `grep -r`,
/// `du`, `find`, `os.walk` and `rsync -a` saw nothing under `/dags/<dag>`
/// or copied dangling links.
#[test]
fn shell_tools_walk_dags_runs_and_syncs_as_directories() {
    if !fuse_available() {
        eprintln!("SKIP: needs /dev/fuse");
        return;
    }
    let e = env();
    let p = e.root.join("pipe");
    fs::create_dir_all(&p).unwrap();
    fs::write(
        p.join("dagfs.toml"),
        "name = \"app\"\n[tasks.gen]\nrun = \"mkdir -p $DAGFS_OUT/sub; echo needle > $DAGFS_OUT/sub/hay.txt; head -c 100000 /dev/zero > $DAGFS_OUT/big\"\n",
    )
    .unwrap();
    let src = e.root.join("src");
    fs::create_dir_all(src.join("d")).unwrap();
    fs::write(src.join("d/f.txt"), "needle in sync\n").unwrap();
    let m = Mounted::new(&e.store, &e.mnt);
    ok(
        dagfs(
            &e.store,
            &["run", "-f", p.join("dagfs.toml").to_str().unwrap()],
        )
        .output()
        .unwrap(),
        "dagfs run",
    );
    sync(&e, &src, "s");
    let dags = e.mnt.join("dags/app");
    let syncs = e.mnt.join("syncs");
    let run_tool =
        |cmd: &str, args: &[&str]| ok(Command::new(cmd).args(args).output().unwrap(), cmd);
    let grep = run_tool(
        "grep",
        &[
            "-r",
            "needle",
            dags.to_str().unwrap(),
            syncs.to_str().unwrap(),
        ],
    );
    assert!(grep.contains("gen/sub/hay.txt:needle"), "{grep}");
    assert!(grep.contains("syncs/s/d/f.txt:needle in sync"), "{grep}");
    assert!(grep.contains("syncs/s@1/d/f.txt"), "{grep}");
    let find = run_tool(
        "find",
        &[e.mnt.join("runs").to_str().unwrap(), "-name", "hay.txt"],
    );
    assert!(find.contains("/gen/sub/hay.txt"), "{find}");
    let du = run_tool("du", &["-sk", dags.to_str().unwrap()]);
    let kb: u64 = du.split_whitespace().next().unwrap().parse().unwrap();
    assert!(kb >= 97, "du counts the files: {du}");
    let walk = run_tool(
        "python3",
        &[
            "-c",
            "import os,sys; print(sum(len(f) for _,_,f in os.walk(sys.argv[1])))",
            dags.to_str().unwrap(),
        ],
    );
    assert_eq!(walk.trim(), "2", "os.walk finds both files");
    if have("rsync") {
        let copy = e.root.join("copy");
        run_tool(
            "rsync",
            &[
                "-a",
                &format!("{}/", dags.display()),
                copy.to_str().unwrap(),
            ],
        );
        assert!(fs::symlink_metadata(copy.join("gen")).unwrap().is_dir());
        assert_eq!(
            fs::read_to_string(copy.join("gen/sub/hay.txt")).unwrap(),
            "needle\n"
        );
    } else {
        eprintln!("SKIP rsync check: rsync is not installed");
    }
    drop(m);
}
