//! The layer walls, checked: every `crate::` (or `super::` up to the crate
//! root) path in a layer's files must name the layer itself or something
//! its `//! May call:` line allows, and every "May call" line may name only
//! layers below it in the stack that ARCHITECTURE.md draws ("1. Layers").
//!
//! A failure names the file and line of the import, what it reaches, and the
//! line that forbids it. The fix is to move the helper down (or the caller
//! up), not to widen the line: a line that names a layer above its own fails
//! too.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A layer's module, its files and what it may call.
struct Layer {
    name: String,
    /// `src/<name>/mod.rs` or `src/<name>.rs`: where its "May call" line is.
    top: PathBuf,
    files: Vec<PathBuf>,
    /// Allowed paths, as segments: `["store"]` allows all of `store`,
    /// `["store", "tree"]` only `store::tree`.
    may_call: Vec<Vec<String>>,
    /// The line the "May call" line starts on (1-based).
    may_call_line: usize,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The layers top to bottom: the first word of each line of the first code
/// block under "## 1. Layers" in ARCHITECTURE.md.
fn stack(architecture: &str) -> Vec<String> {
    let section = architecture
        .split("\n## 1. Layers")
        .nth(1)
        .expect("ARCHITECTURE.md has a section `## 1. Layers`");
    let block = section
        .split("```")
        .nth(1)
        .expect("`## 1. Layers` starts with a code block of the layers");
    block
        .lines()
        .filter(|l| !l.starts_with(' ') && !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The backticked paths in the text after `May call` up to the end of its
/// sentence (a period followed by white space or the end of the comment),
/// and the line it starts on. None if the file has no such line.
fn may_call(top: &Path, layers: &[String]) -> Option<(Vec<Vec<String>>, usize)> {
    let text = std::fs::read_to_string(top).unwrap();
    let doc: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .map_while(|(i, l)| l.strip_prefix("//!").map(|d| (i + 1, d)))
        .collect();
    let start = doc.iter().position(|(_, l)| l.contains("May call:"))?;
    let mut sentence = String::new();
    'lines: for (i, (_, l)) in doc[start..].iter().enumerate() {
        let l = if i == 0 {
            &l[l.find("May call:").unwrap() + "May call:".len()..]
        } else {
            l
        };
        let mut chars = l.char_indices().peekable();
        while let Some((_, c)) = chars.next() {
            if c == '.' && chars.peek().is_none_or(|(_, n)| n.is_whitespace()) {
                break 'lines;
            }
            sentence.push(c);
        }
        sentence.push(' ');
    }
    let allowed = sentence
        .split('`')
        .skip(1)
        .step_by(2)
        .map(|p| p.split("::").map(str::to_string).collect::<Vec<_>>())
        .filter(|p| layers.contains(&p[0]))
        .collect();
    Some((allowed, doc[start].0))
}

/// Remove comments and the contents of string literals, keeping line
/// breaks, so that only code is searched.
fn code_only(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let b: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == '/' && b.get(i + 1) == Some(&'/') {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && b.get(i + 1) == Some(&'*') {
            i += 2;
            while i < b.len() && !(b[i] == '*' && b.get(i + 1) == Some(&'/')) {
                if b[i] == '\n' {
                    out.push('\n');
                }
                i += 1;
            }
            i += 2;
        } else if c == '"' {
            out.push('"');
            i += 1;
            while i < b.len() && b[i] != '"' {
                if b[i] == '\\' {
                    i += 1;
                }
                if b.get(i) == Some(&'\n') {
                    out.push('\n');
                }
                i += 1;
            }
            out.push('"');
            i += 1;
        } else if c == '\'' && b.get(i + 2) == Some(&'\'') {
            // A char literal like '"' (not a lifetime).
            out.push_str("' '");
            i += 3;
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// Expand a `use` tree after `crate::`: `{a::{b, c}, d}` → `a::b`, `a::c`,
/// `d`. Returns the paths (as segments) and how many characters it read.
fn use_tree(s: &[char]) -> (Vec<Vec<String>>, usize) {
    let skip_ws = |mut i: usize| {
        while i < s.len() && s[i].is_whitespace() {
            i += 1;
        }
        i
    };
    let mut i = 0;
    let mut prefix: Vec<String> = Vec::new();
    loop {
        if s.get(i) == Some(&'{') {
            i += 1;
            let mut paths = Vec::new();
            loop {
                while i < s.len() && (s[i].is_whitespace() || s[i] == ',') {
                    i += 1;
                }
                if i >= s.len() || s[i] == '}' {
                    return (paths, i + 1);
                }
                let (sub, n) = use_tree(&s[i..]);
                i += n.max(1);
                for p in sub.into_iter().filter(|p| !p.is_empty()) {
                    let mut full = prefix.clone();
                    full.extend(p);
                    paths.push(full);
                }
            }
        }
        let start = i;
        while i < s.len() && (s[i].is_alphanumeric() || s[i] == '_' || s[i] == '*') {
            i += 1;
        }
        if i > start {
            prefix.push(s[start..i].iter().collect());
        }
        let j = skip_ws(i);
        if i > start && s[j..].starts_with(&[':', ':']) {
            i = skip_ws(j + 2);
            continue;
        }
        return (vec![prefix], i);
    }
}

/// Every path from the crate root in `file` (of module path `module`), with
/// its line: `crate::…`, and `super::…` chains that climb to the root.
fn crate_paths(file: &Path, module: &[String]) -> Vec<(usize, Vec<String>)> {
    let code = code_only(&std::fs::read_to_string(file).unwrap());
    let chars: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut line = 1;
    let mut i = 0;
    let word_start = |i: usize| i == 0 || !(chars[i - 1].is_alphanumeric() || chars[i - 1] == '_');
    while i < chars.len() {
        if chars[i] == '\n' {
            line += 1;
            i += 1;
            continue;
        }
        let at = |w: &str| chars[i..].starts_with(&w.chars().collect::<Vec<_>>());
        if word_start(i) && at("crate::") {
            let (paths, n) = use_tree(&chars[i + "crate::".len()..]);
            out.extend(paths.into_iter().map(|p| (line, p)));
            i += "crate::".len() + n.max(1);
            continue;
        }
        if word_start(i) && at("super::") {
            let mut ups = 0;
            let mut j = i;
            while chars[j..].starts_with(&"super::".chars().collect::<Vec<_>>()) {
                ups += 1;
                j += "super::".len();
            }
            if ups >= module.len() {
                let (paths, n) = use_tree(&chars[j..]);
                out.extend(paths.into_iter().map(|p| (line, p)));
                j += n;
            }
            i = j.max(i + 1);
            continue;
        }
        i += 1;
    }
    out
}

/// `src/exec/scheduler/job.rs` → `["exec", "scheduler", "job"]`;
/// `mod.rs` names its directory.
fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut m: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if m.last().is_some_and(|l| l == "mod") {
        m.pop();
    }
    m
}

fn layers(src: &Path, stack: &[String]) -> Vec<Layer> {
    let mut out = Vec::new();
    // NB: `cli` is the binary's module; it may call everything below it.
    for name in stack.iter().filter(|l| *l != "cli") {
        // `src/<name>/mod.rs`, or `src/<name>.rs` (with or without a
        // `src/<name>/` of submodules).
        let file = src.join(format!("{name}.rs"));
        let dir = src.join(name);
        let mut files = Vec::new();
        if file.exists() {
            files.push(file.clone());
        }
        if dir.is_dir() {
            rust_files(&dir, &mut files);
        }
        let top = if file.exists() {
            file
        } else {
            dir.join("mod.rs")
        };
        assert!(
            top.exists(),
            "ARCHITECTURE.md lists layer `{name}`, but there is neither src/{name}/mod.rs nor src/{name}.rs"
        );
        let Some((may_call, may_call_line)) = may_call(&top, stack) else {
            panic!(
                "{}: layer `{name}` has no `//! May call:` line in its module header",
                top.display()
            );
        };
        out.push(Layer {
            name: name.clone(),
            top,
            files,
            may_call,
            may_call_line,
        });
    }
    out
}

/// What breaks the walls in the tree at `src` with the stack `stack`: one
/// message per offending line.
fn violations(src: &Path, stack: &[String]) -> Vec<String> {
    let base = src.parent().unwrap_or(src);
    let show = |p: &Path| p.strip_prefix(base).unwrap_or(p).display().to_string();
    let layers = layers(src, stack);
    let rank: BTreeMap<&str, usize> = stack
        .iter()
        .enumerate()
        .map(|(i, l)| (l.as_str(), i))
        .collect();
    let mut bad = Vec::new();
    for l in &layers {
        let allowed: Vec<String> = l.may_call.iter().map(|p| p.join("::")).collect();
        for p in &l.may_call {
            if rank[p[0].as_str()] <= rank[l.name.as_str()] {
                bad.push(format!(
                    "{}:{}: the \"May call\" line of `{}` names `{}`, which is not below it in ARCHITECTURE.md's stack",
                    show(&l.top),
                    l.may_call_line,
                    l.name,
                    p.join("::")
                ));
            }
        }
        for f in &l.files {
            let module = module_path(src, f);
            for (line, path) in crate_paths(f, &module) {
                let Some(first) = path.first() else { continue };
                if first == &l.name || !rank.contains_key(first.as_str()) {
                    continue; // its own layer, or not a layer (`crate::Digest` re-exports are not used)
                }
                let ok = l
                    .may_call
                    .iter()
                    .any(|a| path.len() >= a.len() && path[..a.len()] == a[..]);
                if !ok {
                    let kind = if rank[first.as_str()] < rank[l.name.as_str()] {
                        "up"
                    } else {
                        "through a wall"
                    };
                    bad.push(format!(
                        "{}:{line}: `{}` imports `crate::{}` ({kind}); its \"May call\" line ({}:{}) allows: {}",
                        show(f),
                        l.name,
                        path.join("::"),
                        show(&l.top),
                        l.may_call_line,
                        if allowed.is_empty() { "nothing in the crate".to_string() } else { allowed.join(", ") },
                    ));
                }
            }
        }
    }
    bad
}

#[test]
fn every_import_points_down_and_stays_within_its_may_call_line() {
    let arch = std::fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap();
    let stack = stack(&arch);
    assert!(
        stack.len() >= 8 && stack.first().map(String::as_str) == Some("cli"),
        "ARCHITECTURE.md's layer block did not parse: {stack:?}"
    );
    let bad = violations(&root().join("src"), &stack);
    assert!(
        bad.is_empty(),
        "{} import(s) break a layer wall:\n{}",
        bad.len(),
        bad.join("\n")
    );
}

/// The checker itself: an upward import, one through a wall, a grouped
/// `use`, a `super::` chain to the root and an upward "May call" line are
/// each caught; comments, strings and the layer's own paths are not.
#[test]
fn the_checker_catches_each_kind_of_wrong_arrow() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    let write = |p: &str, s: &str| {
        let p = src.join(p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, s).unwrap();
    };
    let stack: Vec<String> = ["cli", "top", "mid", "low"].map(String::from).to_vec();
    write(
        "top/mod.rs",
        "//! May call: `mid`, `low::x`.\nuse crate::mid::A;\nuse crate::low::x::B;\n",
    );
    write(
        "mid/mod.rs",
        "//! Owns: things. May call: `low`.\n//! Guarantees: `top` is never called.\nuse crate::{low::L, top::T};\n// crate::top in a comment\nconst S: &str = \"crate::top\";\n",
    );
    write(
        "mid/deep/inner.rs",
        "use super::super::super::top::X;\nuse super::Y;\nuse crate::mid::Z;\n",
    );
    write(
        "low.rs",
        "//! May call: `top`.\nfn f() { crate::top::g(); }\n",
    );
    let bad = violations(src, &stack);
    let has = |needle: &str| bad.iter().any(|b| b.contains(needle));
    assert!(
        has("mid/mod.rs:3: `mid` imports `crate::top::T` (up)"),
        "{bad:#?}"
    );
    assert!(
        has("mid/deep/inner.rs:1: `mid` imports `crate::top::X` (up)"),
        "{bad:#?}"
    );
    // Its line allows it, but the line itself points up.
    assert!(
        has("low.rs:1: the \"May call\" line of `low` names `top`"),
        "{bad:#?}"
    );
    assert_eq!(bad.len(), 3, "{bad:#?}");

    // A wall: allowed by the stack, not by the line.
    write(
        "top/mod.rs",
        "//! May call: `mid`, `low::x`.\nuse crate::low::y::C;\n",
    );
    let bad = violations(src, &stack);
    assert!(
        bad.iter()
            .any(|b| b.contains("top/mod.rs:2: `top` imports `crate::low::y::C` (through a wall)")),
        "{bad:#?}"
    );
}

// ---------------------------------------------------------------------------
// The shape of the code (issue 14): sizes a newcomer can hold in their head,
// and library code that reports through its caller or `log`, never by
// printing.
// ---------------------------------------------------------------------------

/// No function longer than this, from its `fn` line to its closing brace.
const MAX_FN_LINES: usize = 150;
/// No file longer than this.
const MAX_FILE_LINES: usize = 1000;

/// The binary's own modules (`src/main.rs` declares them): they may print.
fn is_binary(rel: &Path) -> bool {
    rel == Path::new("main.rs") || rel.starts_with("cli") || rel.starts_with("ui")
}

/// The line (0-based) holding the brace that closes the one opened at or
/// after `from` (a byte offset into `code`), if any.
fn closing_line(code: &str, from: usize) -> Option<(usize, usize)> {
    let open = from + code[from..].find('{')?;
    // A declaration without a body (`fn f();` in a trait) ends first.
    if code[from..open].contains(';') {
        return None;
    }
    let mut depth = 0usize;
    for (i, c) in code[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    let end = open + i;
                    return Some((end, code[..end].matches('\n').count()));
                }
            }
            _ => {}
        }
    }
    None
}

/// The byte ranges of `#[cfg(test)]` modules in `code`.
fn test_modules(code: &str) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(i) = code[at..].find("#[cfg(test)]") {
        let start = at + i;
        let rest = code[start..]
            .trim_start_matches("#[cfg(test)]")
            .trim_start();
        let after = start + (code[start..].len() - rest.len());
        if rest.starts_with("mod ") {
            if let Some((end, _)) = closing_line(code, after) {
                out.push(start..end);
                at = end;
                continue;
            }
        }
        at = start + 1;
    }
    out
}

/// Each problem with the shape of the files under `src`, as `path:line:
/// what`, for `files` given relative to `src`.
fn shape_problems(src: &Path, files: &[PathBuf]) -> Vec<String> {
    let mut bad = Vec::new();
    let fn_line = |l: &str| {
        let mut w = l.split_whitespace().peekable();
        while let Some(x) = w.peek() {
            if x.starts_with("pub") || ["const", "unsafe", "async", "extern", "\"C\""].contains(x) {
                w.next();
            } else {
                break;
            }
        }
        (w.next() == Some("fn")).then(|| {
            w.next()
                .map(|n| n.split(['(', '<']).next().unwrap().to_string())
        })?
    };
    for f in files {
        let rel = f.strip_prefix(src).unwrap_or(f);
        let text = std::fs::read_to_string(f).unwrap();
        let code = code_only(&text);
        let lines = text.lines().count();
        if lines > MAX_FILE_LINES {
            bad.push(format!(
                "{}: {lines} lines (at most {MAX_FILE_LINES})",
                rel.display()
            ));
        }
        let mut offset = 0;
        for (n, l) in code.split('\n').enumerate() {
            if let Some(name) = fn_line(l) {
                if let Some((_, end)) = closing_line(&code, offset) {
                    let len = end - n + 1;
                    if len > MAX_FN_LINES {
                        bad.push(format!(
                            "{}:{}: fn {name} is {len} lines (at most {MAX_FN_LINES})",
                            rel.display(),
                            n + 1
                        ));
                    }
                }
            }
            offset += l.len() + 1;
        }
        if is_binary(rel) {
            continue;
        }
        let tests = test_modules(&code);
        for m in ["println!", "eprintln!", "print!", "eprint!", "dbg!"] {
            let mut at = 0;
            while let Some(i) = code[at..].find(m) {
                let pos = at + i;
                at = pos + m.len();
                let word_start =
                    pos == 0 || !code[..pos].ends_with(|c: char| c.is_alphanumeric() || c == '_');
                if word_start && !tests.iter().any(|r| r.contains(&pos)) {
                    bad.push(format!(
                        "{}:{}: `{m}` in library code (report through the caller or `log`)",
                        rel.display(),
                        code[..pos].matches('\n').count() + 1
                    ));
                }
            }
        }
    }
    bad
}

#[test]
fn no_long_function_no_long_file_and_no_printing_in_the_library() {
    let src = root().join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let bad = shape_problems(&src, &files);
    assert!(
        bad.is_empty(),
        "{} problem(s):\n{}",
        bad.len(),
        bad.join("\n")
    );
}

/// The shape checker itself: a long function, a print in library code and
/// a long file are caught; a print in a test module, in the binary's own
/// modules, in a comment or a string, and a trait's bodiless `fn` are not.
#[test]
fn the_shape_checker_catches_long_functions_and_prints() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    let write = |p: &str, s: &str| {
        let p = src.join(p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, s).unwrap();
        p
    };
    let body = "    let x = 1;\n".repeat(MAX_FN_LINES);
    let long = write("lib/a.rs", &format!("trait T {{\n    fn f(&self);\n}}\npub(crate) fn long() {{\n{body}}}\nfn short() {{ let s = \"{{\"; }}\n"));
    let prints = write(
        "lib/b.rs",
        "fn f() {\n    eprintln!(\"x\");\n    // println!(\"in a comment\")\n    let s = \"dbg!(1)\";\n}\n#[cfg(test)]\nmod tests {\n    fn t() { println!(\"fine\"); }\n}\n",
    );
    let cli = write("cli/c.rs", "fn f() { println!(\"the binary prints\"); }\n");
    let big = write("lib/big.rs", &"// a line\n".repeat(MAX_FILE_LINES + 1));
    let bad = shape_problems(src, &[long, prints, cli, big]);
    assert_eq!(
        bad,
        [
            format!(
                "lib/a.rs:4: fn long is {} lines (at most {MAX_FN_LINES})",
                MAX_FN_LINES + 2
            ),
            "lib/b.rs:2: `eprintln!` in library code (report through the caller or `log`)"
                .to_string(),
            format!(
                "lib/big.rs: {} lines (at most {MAX_FILE_LINES})",
                MAX_FILE_LINES + 1
            ),
        ]
    );
}
