//! `dagfs.toml`: parsing and validation of a pipeline file, before anything
//! runs. Every error names the file and, where it has one, the line and
//! column.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::dag::{Dag, DagBuilder};
use super::error::{ExecError, Result};
use super::hermetic::Mode;
use crate::index::units::{parse_duration, parse_size};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    name: Option<Spanned<String>>,
    max_output: Option<Spanned<String>>,
    hermetic: Option<Spanned<String>>,
    #[serde(default)]
    hermetic_scope: Vec<Spanned<String>>,
    #[serde(default)]
    tasks: BTreeMap<Spanned<String>, Spanned<RawTask>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTask {
    run: String,
    #[serde(default)]
    deps: Vec<Spanned<String>>,
    #[serde(default)]
    inputs: Vec<Spanned<String>>,
    #[serde(default)]
    env: Vec<Spanned<String>>,
    #[serde(default)]
    version: String,
    ttl: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    max_output: Option<Spanned<String>>,
    #[serde(default = "yes")]
    cache: bool,
    cwd: Option<Spanned<String>>,
    hermetic: Option<Spanned<String>>,
    #[serde(default)]
    hermetic_scope: Vec<Spanned<String>>,
}

fn yes() -> bool {
    true
}

/// One task as declared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskDef {
    pub name: String,
    pub run: String,
    pub deps: Vec<String>,
    /// Paths relative to the pipeline directory, as written.
    pub inputs: Vec<String>,
    pub env: Vec<String>,
    pub version: String,
    pub ttl: Option<Duration>,
    /// Killed (with its process group) and failed after running this long.
    /// Not part of the key: it does not change what a success produces.
    pub timeout: Option<Duration>,
    /// The most bytes the files of its output may add up to: its own
    /// `max_output`, else the pipeline's; None: no limit.
    pub max_output: Option<u64>,
    pub cache: bool,
    /// Relative to the pipeline directory; "." by default.
    pub cwd: String,
    /// Whether undeclared reads and writes are looked for, and what they
    /// do (`exec::hermetic`): its own, else the pipeline's, else warn.
    /// Not part of the key.
    pub hermetic: Mode,
    /// Absolute trees observed beside the pipeline directory: the
    /// pipeline's `hermetic_scope`, then its own.
    pub hermetic_scope: Vec<PathBuf>,
}

/// A parsed, validated pipeline.
#[derive(Debug, Clone)]
pub struct Pipeline {
    pub name: String,
    pub file: PathBuf,
    /// The directory holding the file: tasks run here.
    pub dir: PathBuf,
    /// Indexed like `dag`'s nodes.
    pub tasks: Vec<TaskDef>,
    pub dag: Dag,
}

pub use crate::store::names::{name_from_path, name_problem, valid_name, MAX_NAME};

fn valid_env_name(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// `file:line:col: ` for a byte offset.
fn locate(file: &Path, text: &str, offset: usize) -> String {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rfind('\n').map(|n| offset - n).unwrap_or(offset + 1);
    format!("{}:{line}:{col}: ", file.display())
}

/// The pipeline-wide settings a task inherits unless it sets its own.
struct Defaults {
    max_output: Option<u64>,
    hermetic: Mode,
    hermetic_scope: Vec<PathBuf>,
}

/// The text being parsed: turns a span into the `file:line:col: ` every
/// error starts with, and checks each kind of value.
struct Source<'a> {
    file: &'a Path,
    text: &'a str,
}

impl Source<'_> {
    fn at(&self, offset: usize) -> String {
        locate(self.file, self.text, offset)
    }

    fn bad<T>(&self, at: &Spanned<T>, msg: String) -> ExecError {
        ExecError::Config(format!("{}{msg}", self.at(at.span().start)))
    }

    fn size(&self, s: &Spanned<String>, whose: &str) -> Result<u64> {
        parse_size(s.get_ref()).ok_or_else(|| {
            let v = s.get_ref();
            self.bad(
                s,
                format!("{whose}max_output {v:?} is not a size (e.g. 512M, 2G)"),
            )
        })
    }

    fn mode(&self, s: &Spanned<String>, whose: &str) -> Result<Mode> {
        Mode::parse(s.get_ref()).ok_or_else(|| {
            let v = s.get_ref();
            self.bad(
                s,
                format!("{whose}hermetic {v:?} is not one of \"warn\", \"strict\", \"off\""),
            )
        })
    }

    fn scope(&self, s: &Spanned<String>, whose: &str) -> Result<PathBuf> {
        let p = Path::new(s.get_ref());
        if p.is_absolute() {
            return Ok(p.to_path_buf());
        }
        Err(self.bad(
            s,
            format!(
                "{whose}hermetic_scope {:?} must be an absolute path (the pipeline directory is always observed)",
                s.get_ref()
            ),
        ))
    }

    /// A duration setting (`ttl`, `timeout`); `min_1s` refuses zero.
    fn duration(
        &self,
        s: &Option<Spanned<String>>,
        what: &str,
        min_1s: bool,
    ) -> Result<Option<Duration>> {
        let Some(s) = s else { return Ok(None) };
        let d = parse_duration(s.get_ref()).filter(|d| !(min_1s && d.is_zero()));
        d.map(Some).ok_or_else(|| {
            let (need, eg) = if min_1s {
                ("a duration of at least 1s", "30s, 5m, 1h")
            } else {
                ("a duration", "30s, 5m, 1h, 7d")
            };
            self.bad(
                s,
                format!("{what} {:?} is not {need} (e.g. {eg})", s.get_ref()),
            )
        })
    }

    /// A relative path inside the pipeline directory (an input, a cwd).
    fn inside(p: &str) -> bool {
        let p = Path::new(p);
        !p.is_absolute() && !p.components().any(|c| c == std::path::Component::ParentDir)
    }

    /// One task, checked, with the pipeline's defaults filled in.
    fn task(
        &self,
        tname: &Spanned<String>,
        t: &RawTask,
        span: std::ops::Range<usize>,
        defaults: &Defaults,
    ) -> Result<TaskDef> {
        let name = tname.get_ref();
        if let Some(why) = name_problem(name) {
            return Err(self.bad(tname, format!("task name {name:?} {why}")));
        }
        let whose = format!("task `{name}`: ");
        if t.run.trim().is_empty() {
            let at = self.at(span.start);
            return Err(ExecError::Config(format!("{at}{whose}`run` is empty")));
        }
        if let Some(e) = t.env.iter().find(|e| !valid_env_name(e.get_ref())) {
            let v = e.get_ref();
            return Err(self.bad(
                e,
                format!("{whose}{v:?} is not an environment variable name"),
            ));
        }
        if let Some(i) = t
            .inputs
            .iter()
            .find(|i| i.get_ref().is_empty() || !Self::inside(i.get_ref()))
        {
            let p = i.get_ref();
            return Err(self.bad(
                i,
                format!("{whose}input {p:?} must be a relative path inside the pipeline directory"),
            ));
        }
        let cwd = match &t.cwd {
            None => ".".to_string(),
            Some(c) if Self::inside(c.get_ref()) => c.get_ref().clone(),
            Some(c) => {
                return Err(self.bad(
                    c,
                    format!("{whose}cwd must be a relative path inside the pipeline directory"),
                ))
            }
        };
        let mut hermetic_scope = defaults.hermetic_scope.clone();
        for s in &t.hermetic_scope {
            hermetic_scope.push(self.scope(s, &whose)?);
        }
        let strings = |v: &[Spanned<String>]| v.iter().map(|d| d.get_ref().clone()).collect();
        Ok(TaskDef {
            name: name.clone(),
            run: t.run.clone(),
            deps: strings(&t.deps),
            inputs: strings(&t.inputs),
            env: strings(&t.env),
            version: t.version.clone(),
            ttl: self.duration(&t.ttl, &format!("{whose}ttl"), false)?,
            timeout: self.duration(&t.timeout, &format!("{whose}timeout"), true)?,
            max_output: match &t.max_output {
                None => defaults.max_output,
                Some(s) => Some(self.size(s, &whose)?),
            },
            cache: t.cache,
            cwd,
            hermetic: match &t.hermetic {
                None => defaults.hermetic,
                Some(s) => self.mode(s, &whose)?,
            },
            hermetic_scope,
        })
    }
}

impl Pipeline {
    pub fn load(file: &Path) -> Result<Pipeline> {
        let text = std::fs::read_to_string(file).map_err(|e| {
            ExecError::Config(format!(
                "{}: cannot read pipeline file: {e}",
                file.display()
            ))
        })?;
        Self::parse(file, &text)
    }

    pub fn parse(file: &Path, text: &str) -> Result<Pipeline> {
        let src = Source { file, text };
        let raw: RawFile = toml::from_str(text).map_err(|e| {
            let at = e
                .span()
                .map(|s| src.at(s.start))
                .unwrap_or_else(|| format!("{}: ", file.display()));
            let msg = e.message().trim().replace('\n', " ");
            // NB: toml 0.8 named the key in the message; 0.9 only spans it.
            let spanned = e.span().and_then(|s| text.get(s));
            if let Some(name) = duplicate_task(&msg, spanned) {
                // Where the repeated header begins (0.9 spans its key).
                let line = e.span().map_or(0, |s| {
                    text.get(..s.start)
                        .unwrap_or("")
                        .rfind('\n')
                        .map_or(0, |i| i + 1)
                });
                let location = if e.span().is_some() { src.at(line) } else { at };
                ExecError::DuplicateTask { name, location }
            } else {
                ExecError::Config(format!("{at}{msg}"))
            }
        })?;
        let dir = match file.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = match &raw.name {
            Some(n) => match name_problem(n.get_ref()) {
                Some(why) => {
                    return Err(src.bad(n, format!("pipeline name {:?} {why}", n.get_ref())))
                }
                None => n.get_ref().clone(),
            },
            None => default_name(&dir),
        };
        let defaults = Defaults {
            max_output: raw
                .max_output
                .as_ref()
                .map(|s| src.size(s, ""))
                .transpose()?,
            hermetic: raw
                .hermetic
                .as_ref()
                .map(|s| src.mode(s, ""))
                .transpose()?
                .unwrap_or_default(),
            hermetic_scope: raw
                .hermetic_scope
                .iter()
                .map(|s| src.scope(s, ""))
                .collect::<Result<Vec<_>>>()?,
        };
        let mut tasks = Vec::with_capacity(raw.tasks.len());
        let mut b = DagBuilder::default();
        let mut spans = Vec::new();
        for (tname, t) in &raw.tasks {
            let def = src.task(tname, t.get_ref(), t.span(), &defaults)?;
            b.push_node(def.name.clone());
            spans.push(t.span());
            for d in &def.deps {
                b.push_edge(d.clone(), def.name.clone());
            }
            tasks.push(def);
        }
        let dag = b.build().map_err(|e| match e {
            ExecError::UnknownDep { task, dep, .. } => {
                let location = tasks
                    .iter()
                    .position(|t| t.name == task)
                    .map(|i| src.at(spans[i].start))
                    .unwrap_or_default();
                ExecError::UnknownDep {
                    task,
                    dep,
                    location,
                }
            }
            other => other,
        })?;
        Ok(Pipeline {
            name,
            file: file.to_path_buf(),
            dir,
            tasks,
            dag,
        })
    }

    pub fn task(&self, name: &str) -> Option<&TaskDef> {
        self.dag.lookup(name).map(|i| &self.tasks[i])
    }
}

fn default_name(dir: &Path) -> String {
    let abs = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    name_from_path(&abs, valid_name, "default")
}

/// TOML reports a repeated `[tasks.x]` as a duplicate key; recover the
/// name: the task a "duplicate key" error names: in backticks in the message
/// (toml 0.8), else the key its span covers (0.9: `a`, `"a"` or `'a'`).
fn duplicate_task(msg: &str, spanned: Option<&str>) -> Option<String> {
    if !msg.contains("duplicate key") {
        return None;
    }
    if let Some(start) = msg.find('`').map(|i| i + 1) {
        let end = start + msg[start..].find('`')?;
        return Some(msg[start..end].to_string());
    }
    let key = spanned?.trim();
    let unquoted = key
        .strip_prefix('"')
        .and_then(|k| k.strip_suffix('"'))
        .or_else(|| key.strip_prefix('\'').and_then(|k| k.strip_suffix('\'')))
        .unwrap_or(key);
    Some(unquoted.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Pipeline> {
        Pipeline::parse(Path::new("p/dagfs.toml"), s)
    }

    #[test]
    fn good_file_parses() {
        let p = parse(
            "name = \"app\"\n[tasks.a]\nrun = \"echo\"\nenv = [\"LANG\"]\nttl = \"1h\"\n[tasks.b]\nrun = \"x\"\ndeps = [\"a\"]\ncache = false\n",
        )
        .unwrap();
        assert_eq!(p.name, "app");
        assert_eq!(p.tasks.len(), 2);
        let b = p.task("b").unwrap();
        assert_eq!(b.deps, ["a"]);
        assert!(!b.cache);
        assert_eq!(p.task("a").unwrap().ttl, Some(Duration::from_secs(3600)));
        assert_eq!(p.task("a").unwrap().timeout, None);
        let p = parse("[tasks.a]\nrun = \"x\"\ntimeout = \"2m\"\n").unwrap();
        assert_eq!(p.task("a").unwrap().timeout, Some(Duration::from_secs(120)));
    }

    #[test]
    fn max_output_is_the_tasks_own_else_the_pipelines() {
        let p = parse(
            "max_output = \"1M\"\n[tasks.a]\nrun = \"x\"\n[tasks.b]\nrun = \"x\"\nmax_output = \"2K\"\n",
        )
        .unwrap();
        assert_eq!(p.task("a").unwrap().max_output, Some(1 << 20));
        assert_eq!(p.task("b").unwrap().max_output, Some(2048));
        let p = parse("[tasks.a]\nrun = \"x\"\n").unwrap();
        assert_eq!(p.task("a").unwrap().max_output, None);
        let e = parse("[tasks.a]\nrun = \"x\"\nmax_output = \"big\"\n").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("p/dagfs.toml:3:14: task `a`: max_output \"big\""),
            "{e}"
        );
        let e = parse("max_output = \"1Q\"\n[tasks.a]\nrun = \"x\"\n").unwrap_err();
        assert!(
            e.to_string().starts_with("p/dagfs.toml:1:14: max_output"),
            "{e}"
        );
    }

    #[test]
    fn bad_timeout_names_its_line_and_column() {
        let e = parse("[tasks.a]\nrun = \"x\"\ntimeout = \"soon\"\n").unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("p/dagfs.toml:3:11: "), "{msg}");
        assert!(msg.contains("task `a`: timeout \"soon\""), "{msg}");
    }

    #[test]
    fn errors_name_file_line_and_column() {
        let e = parse("[tasks.a]\nrun = \"x\"\nbogus = 1\n").unwrap_err();
        assert!(matches!(e, ExecError::Config(_)));
        assert!(e.to_string().starts_with("p/dagfs.toml:3:1: "), "{e}");
        assert!(e.to_string().contains("bogus"), "{e}");
        let e = parse("[tasks.a]\ndeps = []\n").unwrap_err();
        assert!(e.to_string().contains("missing field `run`"), "{e}");
        assert!(e.to_string().starts_with("p/dagfs.toml:"), "{e}");
        let e = parse("[tasks.a\nrun=1").unwrap_err();
        assert!(e.to_string().starts_with("p/dagfs.toml:1:"), "{e}");
    }

    #[test]
    fn duplicate_unknown_and_cycle_are_distinct() {
        let e = parse("[tasks.a]\nrun = \"x\"\n[tasks.a]\nrun = \"y\"\n").unwrap_err();
        assert!(
            matches!(e, ExecError::DuplicateTask { ref name, .. } if name == "a"),
            "{e}"
        );
        let e = parse("[tasks.a]\nrun = \"x\"\ndeps = [\"nope\"]\n").unwrap_err();
        assert!(
            matches!(e, ExecError::UnknownDep { ref dep, .. } if dep == "nope"),
            "{e}"
        );
        assert!(e.to_string().starts_with("p/dagfs.toml:1:1: "), "{e}");
        let e = parse(
            "[tasks.a]\nrun = \"x\"\ndeps = [\"b\"]\n[tasks.b]\nrun = \"y\"\ndeps = [\"a\"]\n",
        )
        .unwrap_err();
        assert!(matches!(e, ExecError::Cycle(_)), "{e}");
    }

    #[test]
    fn hostile_values_are_refused() {
        for bad in [
            "[tasks.\"a/b\"]\nrun = \"x\"\n",
            "[tasks.a]\nrun = \"x\"\ninputs = [\"../etc\"]\n",
            "[tasks.a]\nrun = \"x\"\ninputs = [\"/etc\"]\n",
            "[tasks.a]\nrun = \"x\"\nenv = [\"A B\"]\n",
            "[tasks.a]\nrun = \"x\"\nttl = \"soon\"\n",
            "[tasks.a]\nrun = \"x\"\ntimeout = \"0s\"\n",
            "[tasks.a]\nrun = \"x\"\ntimeout = \"-1s\"\n",
            "[tasks.a]\nrun = \"x\"\ntimeout = 5\n",
            "[tasks.a]\nrun = \"  \"\n",
        ] {
            assert!(matches!(parse(bad), Err(ExecError::Config(_))), "{bad}");
        }
    }
}
