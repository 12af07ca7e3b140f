//! Undeclared reads and writes (issue 13.5): every file a task opens and
//! every directory it lists under the pipeline directory (or a
//! `hermetic_scope`) that it did not declare is named, with the fix:
//! `hermetic = "warn"` (default) goes on and records the findings in the
//! entry (`explain`, `/why`), `"strict"` fails the task and caches nothing.
//! Reads through a symlink, from a subprocess, from a thread, by relative
//! `openat` and by mmap are all seen; a fully declared C build has no
//! finding at all. Observation needs root (fanotify mount marks): as
//! `nobody` a run says it could not check, and strict refuses.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::{text, Mounted, Sandbox, BIN};

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

struct Sb {
    sb: Sandbox,
    p: PathBuf,
    nobody: bool,
}

/// The shared `Sandbox` (its `root`, `store`), with what this file adds.
impl std::ops::Deref for Sb {
    type Target = Sandbox;
    fn deref(&self) -> &Sandbox {
        &self.sb
    }
}

impl Sb {
    fn new(toml: &str) -> Sb {
        let sb = Sandbox::new();
        let p = sb.root.join("p");
        fs::create_dir_all(p.join("src")).unwrap();
        fs::create_dir_all(p.join("include")).unwrap();
        fs::create_dir_all(p.join("data")).unwrap();
        fs::write(p.join("dagfs.toml"), toml).unwrap();
        fs::write(p.join("include/ast.h"), "#define AST 1\n").unwrap();
        fs::write(p.join("include/config.h"), "#define CFG 2\n").unwrap();
        fs::write(
            p.join("src/parser.c"),
            "#include <stdio.h>\n#include \"ast.h\"\n#include \"config.h\"\nint parse(void) { return AST + CFG; }\n",
        )
        .unwrap();
        fs::write(
            p.join("src/main.c"),
            "#include <stdio.h>\nint parse(void);\nint main(void) { printf(\"%d\\n\", parse()); return 0; }\n",
        )
        .unwrap();
        fs::write(p.join("data/a.txt"), "a\n").unwrap();
        fs::write(p.join("data/b.txt"), "b\n").unwrap();
        Sb {
            sb,
            p,
            nobody: false,
        }
    }

    /// The same sandbox, run as `nobody` (its files made theirs).
    fn run_as_nobody(mut self) -> Sb {
        fs::set_permissions(&self.root, fs::Permissions::from_mode(0o777)).unwrap();
        let o = Command::new("chown")
            .args(["-R", "65534:65534"])
            .arg(&self.p)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o));
        self.nobody = true;
        self
    }

    fn dagfs(&self, args: &[&str]) -> Output {
        let mut c = if self.nobody {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups", BIN]);
            c
        } else {
            Command::new(BIN)
        };
        c.arg("--store")
            .arg(&self.store)
            .args(args)
            .current_dir(&self.p)
            .env_remove("DAGFS_STORE")
            .env_remove("DAGFS_ISOLATION")
            .stdin(Stdio::null());
        c.output().unwrap()
    }

    fn run(&self) -> Output {
        self.dagfs(&["run", "-j2"])
    }

    fn toml(&self, toml: &str) {
        fs::write(self.p.join("dagfs.toml"), toml).unwrap();
    }
}

/// The `dagfs: warning: task …` lines of a run.
fn warnings(o: &Output) -> Vec<String> {
    String::from_utf8_lossy(&o.stderr)
        .lines()
        .filter(|l| l.starts_with("dagfs: warning: task "))
        .map(str::to_string)
        .collect()
}

/// Root only: say so and skip elsewhere.
fn root_or_skip(what: &str) -> bool {
    if !is_root() {
        eprintln!("SKIP {what}: observing a task's reads needs root (fanotify mount marks)");
    }
    is_root()
}

const C_BUILD: &str = r#"
name = "cb"
[tasks.compile_parser]
run = "gcc -Iinclude -c src/parser.c -o $DAGFS_OUT/parser.o"
inputs = ["src/parser.c"]
[tasks.compile_main]
run = "gcc -c src/main.c -o $DAGFS_OUT/main.o"
inputs = ["src/main.c"]
[tasks.link]
run = "gcc $DAGFS_IN/compile_parser/parser.o $DAGFS_IN/compile_main/main.o -o $DAGFS_OUT/prog && $DAGFS_OUT/prog > $DAGFS_OUT/result"
deps = ["compile_parser", "compile_main"]
"#;

/// Regression (issue 13.5): a compile whose headers are undeclared stayed a
/// hit after a header changed, and nothing said so.
#[test]
fn undeclared_headers_are_named_with_the_fix() {
    if !root_or_skip("undeclared_headers_are_named_with_the_fix") {
        return;
    }
    let sb = Sb::new(C_BUILD);
    let o = sb.run();
    assert!(o.status.success(), "{}", text(&o));
    let w = warnings(&o);
    assert_eq!(
        w,
        vec!["dagfs: warning: task compile_parser read include/ast.h, include/config.h, which are not among its inputs; an edit to them will not re-run it (add \"include/\" to inputs)".to_string()],
        "{}",
        text(&o)
    );
    // Recorded in the entry: explain and /why show it.
    let e = sb.dagfs(&["explain", "compile_parser"]);
    assert!(e.status.success(), "{}", text(&e));
    let et = String::from_utf8_lossy(&e.stdout).to_string();
    assert!(
        et.contains("read, undeclared           include/ast.h"),
        "{et}"
    );
    assert!(
        et.contains("read, undeclared           include/config.h"),
        "{et}"
    );
    let e = sb.dagfs(&["explain", "compile_main"]);
    let et = String::from_utf8_lossy(&e.stdout).to_string();
    assert!(
        et.contains("undeclared (hermetic)") && et.contains("nothing:"),
        "{et}"
    );
    // A second run is a hit and says nothing more.
    let o = sb.run();
    assert!(
        o.status.success() && warnings(&o).is_empty(),
        "{}",
        text(&o)
    );
    let mnt = sb.root.join("mnt");
    fs::create_dir(&mnt).unwrap();
    match Mounted::try_new(&sb.store, &mnt) {
        Ok(_m) => {
            let why = fs::read_to_string(mnt.join("why/cb/compile_parser")).unwrap();
            assert!(
                why.contains("read, undeclared           include/ast.h"),
                "{why}"
            );
        }
        Err(e) => eprintln!("SKIP the /why half: {e}"),
    }
}

#[test]
fn strict_fails_the_task_and_caches_nothing() {
    if !root_or_skip("strict_fails_the_task_and_caches_nothing") {
        return;
    }
    let sb = Sb::new(&format!("hermetic = \"strict\"\n{C_BUILD}"));
    for _ in 0..2 {
        let o = sb.run();
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        let t = text(&o);
        assert!(
            t.contains("task `compile_parser` failed: hermetic = \"strict\": task compile_parser read include/ast.h, include/config.h, which are not among its inputs"),
            "{t}"
        );
        assert!(t.contains("skip  link"), "{t}");
        // Nothing of it cached: the second round fails the same way.
        assert!(!t.contains("hit   compile_parser"), "{t}");
    }
    // Declared, strict passes, and the entries vouch for it.
    sb.toml(&format!(
        "hermetic = \"strict\"\n{}",
        C_BUILD.replace(
            "inputs = [\"src/parser.c\"]",
            "inputs = [\"src/parser.c\", \"include/\"]"
        )
    ));
    let o = sb.run();
    assert!(o.status.success(), "{}", text(&o));
    assert!(warnings(&o).is_empty(), "{}", text(&o));
}

/// A warn-mode entry does not vouch for a strict run: strict is part of the
/// key, so turning it on re-runs (and here fails) what warn let through.
#[test]
fn an_entry_made_under_warn_is_no_hit_for_strict() {
    if !root_or_skip("an_entry_made_under_warn_is_no_hit_for_strict") {
        return;
    }
    let sb = Sb::new(C_BUILD);
    assert!(sb.run().status.success());
    sb.toml(&format!("hermetic = \"strict\"\n{C_BUILD}"));
    let o = sb.run();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(!text(&o).contains("hit   compile_parser"), "{}", text(&o));
}

/// Everything declared: no finding from the compiler, system headers,
/// `$DAGFS_IN`, `$DAGFS_OUT` or `$TMPDIR`.
#[test]
fn a_fully_declared_c_build_has_no_finding() {
    if !root_or_skip("a_fully_declared_c_build_has_no_finding") {
        return;
    }
    let sb = Sb::new(&C_BUILD.replace(
        "inputs = [\"src/parser.c\"]",
        "inputs = [\"src/parser.c\", \"include/ast.h\", \"include/config.h\"]",
    ));
    let o = sb.run();
    assert!(o.status.success(), "{}", text(&o));
    assert!(warnings(&o).is_empty(), "{}", text(&o));
    assert!(!text(&o).contains("not checked"), "{}", text(&o));
    for t in ["compile_parser", "compile_main", "link"] {
        let e = sb.dagfs(&["explain", t]);
        let et = String::from_utf8_lossy(&e.stdout).to_string();
        assert!(et.contains("nothing: every file it opened"), "{t}: {et}");
    }
}

/// The example pipeline declares what it reads.
#[test]
fn hello_c_is_clean() {
    if !root_or_skip("hello_c_is_clean") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let ex = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/hello-c");
    let o = Command::new("cp")
        .arg("-r")
        .arg(&ex)
        .arg(tmp.path().join("hc"))
        .output()
        .unwrap();
    assert!(o.status.success());
    let o = Command::new(BIN)
        .arg("--store")
        .arg(tmp.path().join("store"))
        .args(["run"])
        .current_dir(tmp.path().join("hc"))
        .env_remove("DAGFS_ISOLATION")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(warnings(&o).is_empty(), "{}", text(&o));
}

/// A small C program: reads `data/a.txt` from a second thread, `b.txt` by
/// `openat` relative to a descriptor of `data`, and maps `mapped.txt`.
const PROBE_C: &str = r#"
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>
static void *reader(void *arg) {
    char b[16];
    int fd = open("data/a.txt", O_RDONLY);
    if (fd < 0 || read(fd, b, sizeof b) < 0) return (void *)1;
    close(fd);
    return 0;
}
int main(void) {
    pthread_t t;
    void *r;
    if (pthread_create(&t, 0, reader, 0) || pthread_join(t, &r) || r) return 1;
    int d = open("data", O_RDONLY | O_DIRECTORY);
    int f = openat(d, "b.txt", O_RDONLY);
    char b[16];
    if (d < 0 || f < 0 || read(f, b, sizeof b) < 0) return 2;
    int m = open("mapped.txt", O_RDONLY);
    char *p = mmap(0, 4096, PROT_READ, MAP_PRIVATE, m, 0);
    close(m);
    if (p == MAP_FAILED || p[0] != 'm') return 3;
    return 0;
}
"#;

#[test]
fn reads_by_thread_openat_mmap_symlink_and_subprocess_are_seen() {
    if !root_or_skip("reads_by_thread_openat_mmap_symlink_and_subprocess_are_seen") {
        return;
    }
    let sb = Sb::new("");
    // The probe lives outside the pipeline directory (like a compiler).
    let bin = sb.root.join("probe");
    fs::write(sb.root.join("probe.c"), PROBE_C).unwrap();
    let o = Command::new("gcc")
        .arg(sb.root.join("probe.c"))
        .arg("-pthread")
        .arg("-o")
        .arg(&bin)
        .output()
        .unwrap();
    assert!(o.status.success(), "gcc: {}", text(&o));
    fs::write(sb.p.join("mapped.txt"), "mapped\n").unwrap();
    fs::create_dir(sb.p.join("secret")).unwrap();
    fs::write(sb.p.join("secret/key.txt"), "k\n").unwrap();
    std::os::unix::fs::symlink("secret/key.txt", sb.p.join("via-link")).unwrap();
    fs::write(sb.p.join("sub.txt"), "s\n").unwrap();
    sb.toml(&format!(
        r#"
name = "probe"
[tasks.threads]
run = "{} > $DAGFS_OUT/ok"
[tasks.link]
run = "cat via-link > $DAGFS_OUT/k"
[tasks.sub]
run = "sh -c 'sh -c \"cat sub.txt\" > $DAGFS_OUT/s' & wait"
"#,
        bin.display()
    ));
    let o = sb.run();
    assert!(o.status.success(), "{}", text(&o));
    let w = warnings(&o).join("\n");
    assert!(
        w.contains(
            "task threads read data/a.txt, data/b.txt, mapped.txt, which are not among its inputs"
        ),
        "{w}"
    );
    // The directory the openat went through was opened: a listing.
    assert!(w.contains("task threads listed data/"), "{w}");
    assert!(
        w.contains("task link read secret/key.txt, which is not among its inputs"),
        "{w}"
    );
    assert!(
        w.contains("task sub read sub.txt, which is not among its inputs"),
        "{w}"
    );
    // Each task is charged with its own reads only (they ran two at a time).
    assert!(!w.contains("task link read data"), "{w}");
    assert!(!w.contains("task sub read secret"), "{w}");
}

#[test]
fn writes_outside_the_output_and_other_scopes_are_named() {
    if !root_or_skip("writes_outside_the_output_and_other_scopes_are_named") {
        return;
    }
    let sb = Sb::new("");
    let sdk = sb.root.join("sdk");
    fs::create_dir(&sdk).unwrap();
    fs::write(sdk.join("sdk.h"), "x\n").unwrap();
    sb.toml(&format!(
        r#"
hermetic_scope = ["{}"]
[tasks.w]
run = "mkdir -p build && echo o > build/x.o && cat {}/sdk.h > $DAGFS_OUT/h && echo t > $TMPDIR/t && cat $TMPDIR/t > $DAGFS_OUT/t"
[tasks.quiet]
hermetic = "off"
run = "cat data/a.txt > $DAGFS_OUT/a"
"#,
        sdk.display(),
        sdk.display()
    ));
    let o = sb.run();
    assert!(o.status.success(), "{}", text(&o));
    let w = warnings(&o).join("\n");
    assert!(
        w.contains("task w wrote build/x.o outside $DAGFS_OUT"),
        "{w}"
    );
    assert!(
        w.contains(&format!(
            "task w read {}/sdk.h, which is not among its inputs",
            sdk.display()
        )),
        "{w}"
    );
    assert!(!w.contains("TMPDIR") && !w.contains("/t,"), "{w}");
    assert!(!w.contains("task quiet"), "{w}");
}

#[test]
fn bad_hermetic_settings_are_named() {
    let sb = Sb::new("hermetic = \"loud\"\n[tasks.a]\nrun = \"true\"\n");
    let o = sb.run();
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(
        text(&o).contains("hermetic \"loud\" is not one of \"warn\", \"strict\", \"off\""),
        "{}",
        text(&o)
    );
    sb.toml("[tasks.a]\nrun = \"true\"\nhermetic_scope = [\"sdk\"]\n");
    let o = sb.run();
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(
        text(&o).contains("task `a`: hermetic_scope \"sdk\" must be an absolute path"),
        "{}",
        text(&o)
    );
    sb.toml("hermetic_scope = [\"/nonexistent/sdk\"]\n[tasks.a]\nrun = \"true\"\n");
    let o = sb.run();
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(
        text(&o).contains("hermetic_scope /nonexistent/sdk: No such file or directory"),
        "{}",
        text(&o)
    );
}

/// As a normal user reads cannot be observed: the run says so once, and
/// strict refuses to vouch for a task it could not watch.
#[test]
fn a_normal_user_is_told_reads_were_not_checked() {
    let sb = Sb::new(C_BUILD);
    let sb = if is_root() {
        if Command::new("setpriv").arg("--version").output().is_err() {
            eprintln!("SKIP a_normal_user_is_told_reads_were_not_checked: no setpriv");
            return;
        }
        sb.run_as_nobody()
    } else {
        sb
    };
    let o = sb.run();
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("dagfs: note: undeclared reads and writes were not checked: "),
        "{}",
        text(&o)
    );
    assert!(warnings(&o).is_empty(), "{}", text(&o));
    sb.toml(&format!("hermetic = \"strict\"\n{C_BUILD}"));
    let o = sb.run();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("hermetic = \"strict\", but its reads cannot be checked here"),
        "{}",
        text(&o)
    );
}

/// One worker's tasks share a fanotify group (kept from task to task, so
/// its destruction is paid once): each task's findings are its own. With
/// `-j1`, six tasks in a row each read one undeclared file and declare
/// another; each warning names exactly its own file, and the declared one
/// is never a finding.
#[test]
fn tasks_sharing_a_worker_each_see_only_their_own_reads() {
    if !root_or_skip("tasks_sharing_a_worker_each_see_only_their_own_reads") {
        return;
    }
    let mut toml = String::from("name = \"seq\"\n");
    for i in 0..6 {
        toml += &format!(
            "[tasks.t{i}]\nrun = \"cat data/f{i}.txt data/g{i}.txt > $DAGFS_OUT/o\"\ninputs = [\"data/g{i}.txt\"]\n{}",
            if i > 0 { format!("deps = [\"t{}\"]\n", i - 1) } else { String::new() }
        );
    }
    let sb = Sb::new(&toml);
    for i in 0..6 {
        fs::write(sb.p.join(format!("data/f{i}.txt")), format!("f{i}\n")).unwrap();
        fs::write(sb.p.join(format!("data/g{i}.txt")), format!("g{i}\n")).unwrap();
    }
    let o = sb.dagfs(&["run", "-j1"]);
    assert!(o.status.success(), "{}", text(&o));
    let w = warnings(&o);
    assert_eq!(w.len(), 6, "one warning per task: {w:#?}");
    for i in 0..6 {
        let mine: Vec<_> = w
            .iter()
            .filter(|l| l.starts_with(&format!("dagfs: warning: task t{i} ")))
            .collect();
        assert_eq!(mine.len(), 1, "t{i}: {w:#?}");
        for j in 0..6 {
            let named = mine[0].contains(&format!("data/f{j}.txt"));
            assert_eq!(named, i == j, "t{i} and data/f{j}.txt: {}", mine[0]);
            assert!(!mine[0].contains(&format!("data/g{j}.txt")), "{}", mine[0]);
        }
    }
}
