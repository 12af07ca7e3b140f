//! Shell tasks from a `dagfs.toml`: turning a `Pipeline` into a scheduler
//! `Plan` (hashing declared inputs, reading declared env), and the job that
//! runs a task's command.
//!
//! Task environment (nothing else is inherited): `PATH`, `HOME`, `USER`,
//! `LOGNAME` from dagfs's own environment (not part of the key: declare
//! them in `env` to key them), the task's declared `env` vars (keyed),
//! `DAGFS_OUT`, `DAGFS_IN`, `DAGFS_INPUTS` (each declared input as it was
//! snapshotted for the key: `$DAGFS_INPUTS/<path>`, so an edit during the run
//! cannot make the output disagree with its key), `DAGFS_TASK`,
//! `DAGFS_DAG`, and a private
//! `TMPDIR`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::error::{ExecError, Result};
use super::hermetic::{self, Checked, Mode, Observed};
use super::key::KeyBuilder;
use super::pipeline::Pipeline;
use super::runner::{Command, Runner};
use super::scheduler::{Job, JobContext, JobError, JobResult, Plan, PlanNode};
use crate::cache::Cache;
use crate::hash::Digest;
use crate::store::Manifest;
use crate::sync::{snapshot_input, InputKind};

/// Env vars passed through to every task without entering its key.
pub const PASSTHROUGH_ENV: [&str; 4] = ["PATH", "HOME", "USER", "LOGNAME"];

pub struct ShellJob {
    runner: Arc<dyn Runner>,
    /// (path as declared, snapshot digest, kind).
    inputs: Vec<(String, Digest, InputKind)>,
    script: String,
    /// The pipeline file's directory (inputs are relative to it).
    base: PathBuf,
    cwd: PathBuf,
    env: Vec<(String, String)>,
    task: String,
    dag: String,
    timeout: Option<std::time::Duration>,
    hermetic: Mode,
    /// Observed trees beyond the pipeline directory (`hermetic_scope`),
    /// resolved.
    scopes: Vec<PathBuf>,
}

impl Job for ShellJob {
    /// `$DAGFS_IN` is made by `materialize_deps`.
    fn reads_deps_from_context(&self) -> bool {
        true
    }

    fn run(&self, ctx: &JobContext<'_>) -> std::result::Result<JobResult, JobError> {
        let input = ctx.materialize_deps()?;
        let snapshots = ctx.work_dir.join("inputs");
        std::fs::create_dir_all(&snapshots).map_err(JobError::io(&snapshots))?;
        // NB: an input inside a declared directory input is already there.
        let dirs: Vec<&str> = self
            .inputs
            .iter()
            .filter(|i| i.2 == InputKind::Dir)
            .map(|i| i.0.trim_end_matches('/'))
            .collect();
        let covered = |p: &str| {
            let p = p.trim_end_matches('/');
            dirs.iter()
                .any(|d| p != *d && (d.is_empty() || d == &"." || p.starts_with(&format!("{d}/"))))
        };
        let mut made = std::collections::HashSet::new();
        // Each declared input's snapshot, mounted over the host path where
        // the task is isolated: what it reads in place is what was hashed.
        let mut in_place = Vec::new();
        for (path, digest, kind) in &self.inputs {
            if covered(path) || !made.insert(path.trim_end_matches('/')) {
                continue;
            }
            let src = match kind {
                InputKind::Dir => ctx.tree_path(digest)?,
                InputKind::File => ctx.blob_path(digest)?,
                InputKind::Other => continue,
            };
            let link = snapshots.join(path.trim_end_matches('/'));
            if let Some(parent) = link.parent() {
                std::fs::create_dir_all(parent).map_err(JobError::io(parent))?;
            }
            std::os::unix::fs::symlink(&src, &link).map_err(JobError::io(&link))?;
            in_place.push((src, self.base.join(path.trim_end_matches('/'))));
        }
        let tmp = ctx.work_dir.join("tmp");
        std::fs::create_dir_all(&tmp).map_err(JobError::io(&tmp))?;
        let mut env = self.env.clone();
        env.push(("DAGFS_OUT".into(), ctx.out_dir.display().to_string()));
        env.push(("DAGFS_IN".into(), input.display().to_string()));
        env.push(("DAGFS_INPUTS".into(), snapshots.display().to_string()));
        env.push(("DAGFS_TASK".into(), self.task.clone()));
        env.push(("DAGFS_DAG".into(), self.dag.clone()));
        env.push(("TMPDIR".into(), tmp.display().to_string()));
        let cmd = Command {
            script: self.script.clone(),
            cwd: self.cwd.clone(),
            env,
            stdout: ctx.work_dir.join("stdout"),
            stderr: ctx.work_dir.join("stderr"),
            timeout: self.timeout,
            output_limit: ctx.max_output.map(|m| (ctx.out_dir.to_path_buf(), m)),
            isolation: Some(super::isolate::Isolation {
                store: ctx.store.root().to_path_buf(),
                writable: vec![ctx.out_dir.to_path_buf(), tmp.clone()],
                in_place,
                cwd: self.cwd.clone(),
                observe: (self.hermetic != Mode::Off).then(|| {
                    let mut trees = vec![self.base.clone()];
                    trees.extend(self.scopes.iter().cloned());
                    trees
                }),
            }),
        };
        let exit = self.runner.run(&cmd).map_err(|source| JobError::Spawn {
            program: "/bin/sh".into(),
            source,
        })?;
        let findings = match exit.observed {
            Observed::NotAsked => None,
            Observed::Unobservable(why) => Some(Err(why)),
            Observed::Seen { seen, mounts } => {
                let declared: Vec<String> = self.inputs.iter().map(|i| i.0.clone()).collect();
                Some(Ok(hermetic::classify(
                    &seen, &mounts, &self.base, &declared,
                )))
            }
        };
        Ok(JobResult {
            exit_code: exit.code,
            stdout: cmd.stdout,
            stderr: cmd.stderr,
            timed_out: exit.timed_out.then_some(self.timeout).flatten(),
            output_over: exit.output_over,
            hermetic: findings.map(|findings| Checked {
                mode: self.hermetic,
                findings,
            }),
        })
    }
}

/// Build the plan for `targets` (and their dependencies), or for every
/// task when `targets` is empty, reading env vars from this process. Inputs
/// are snapshotted into `cache` (see `sync::snapshot_input`).
pub fn plan(
    p: &Pipeline,
    targets: &[String],
    runner: Arc<dyn Runner>,
    cache: &Cache,
) -> Result<Plan> {
    plan_with_env(p, targets, runner, &|k| std::env::var(k).ok(), cache)
}

/// `plan`, reading env vars through `env` (the daemon passes its client's).
pub fn plan_with_env(
    p: &Pipeline,
    targets: &[String],
    runner: Arc<dyn Runner>,
    env: &dyn Fn(&str) -> Option<String>,
    cache: &Cache,
) -> Result<Plan> {
    let idx: Vec<usize> = targets
        .iter()
        .map(|t| {
            p.dag
                .lookup(t)
                .ok_or_else(|| ExecError::UnknownTask(t.clone()))
        })
        .collect::<Result<_>>()?;
    let keep = if idx.is_empty() {
        vec![true; p.dag.len()]
    } else {
        p.dag.closure(&idx)
    };
    let dir = std::fs::canonicalize(&p.dir)
        .map_err(|e| ExecError::Config(format!("{}: pipeline directory: {e}", p.dir.display())))?;
    let mut local = vec![usize::MAX; p.dag.len()];
    let mut nodes = Vec::new();
    let mut input_cache: HashMap<String, (Digest, InputKind)> = HashMap::new();
    let passthrough: Vec<(String, String)> = PASSTHROUGH_ENV
        .iter()
        .filter_map(|k| env(k).map(|v| (k.to_string(), v)))
        .collect();
    for &i in p.dag.topo_order() {
        if !keep[i] {
            continue;
        }
        let t = &p.tasks[i];
        let mut inputs = Vec::new();
        let mut job_inputs = Vec::new();
        for path in &t.inputs {
            let d = match input_cache.get(path) {
                Some(d) => *d,
                None => {
                    let bad = |reason: String| ExecError::Input {
                        task: t.name.clone(),
                        input: path.clone(),
                        reason,
                    };
                    through_symlink(&dir, path).map_err(bad)?;
                    let d =
                        snapshot_input(cache, &dir.join(path)).map_err(|e| bad(e.to_string()))?;
                    input_cache.insert(path.clone(), d);
                    d
                }
            };
            job_inputs.push((path.clone(), d.0, d.1));
            inputs.push((path.clone(), d.0));
        }
        let env: Vec<(String, Option<String>)> =
            t.env.iter().map(|k| (k.clone(), env(k))).collect();
        let mut manifest = Manifest {
            name: t.name.clone(),
            command: t.run.clone(),
            cwd: t.cwd.clone(),
            env: env.clone(),
            inputs,
            params: Vec::new(),
            version: t.version.clone(),
            task_digest: Digest::default(),
            deps: Vec::new(),
        };
        // NB: a strict task's entry vouches that it read nothing
        // undeclared, which an entry made under "warn" or "off" does not:
        // strict is part of the key (the others are not).
        if t.hermetic == Mode::Strict {
            manifest
                .params
                .push(("hermetic".into(), Digest::of(b"strict")));
        }
        manifest.env.sort();
        manifest.inputs.sort();
        manifest.task_digest = KeyBuilder::task_digest(&manifest);
        let mut job_env = passthrough.clone();
        job_env.retain(|(k, _)| !t.env.contains(k));
        job_env.extend(env.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))));
        let job = ShellJob {
            runner: runner.clone(),
            inputs: job_inputs,
            script: t.run.clone(),
            base: dir.clone(),
            cwd: dir.join(&t.cwd),
            env: job_env,
            task: t.name.clone(),
            dag: p.name.clone(),
            timeout: t.timeout,
            hermetic: t.hermetic,
            scopes: t
                .hermetic_scope
                .iter()
                .map(|s| {
                    std::fs::canonicalize(s).map_err(|e| {
                        ExecError::Config(format!(
                            "task `{}`: hermetic_scope {}: {e}",
                            t.name,
                            s.display()
                        ))
                    })
                })
                .collect::<Result<_>>()?,
        };
        local[i] = nodes.len();
        nodes.push(PlanNode {
            name: t.name.clone(),
            deps: p.dag.deps(i).iter().map(|&d| local[d]).collect(),
            manifest,
            cache: t.cache,
            ttl: t.ttl,
            max_output: t.max_output,
            job: Arc::new(job),
        });
    }
    Ok(Plan {
        dag: p.name.clone(),
        nodes,
    })
}

/// Refuse an input whose path goes through a symlink (`root/etc/shadow`
/// with `root -> /`): the pipeline's text names a path inside its
/// directory, and a link on the way would take it anywhere. The last
/// component may be a link: it is hashed as a link, never followed.
/// (The path itself is relative, without `..`: checked when parsed.)
fn through_symlink(dir: &Path, input: &str) -> std::result::Result<(), String> {
    let comps: Vec<_> = Path::new(input).components().collect();
    let mut at = dir.to_path_buf();
    for (i, c) in comps.iter().enumerate() {
        at.push(c);
        if i + 1 == comps.len() {
            break;
        }
        match std::fs::symlink_metadata(&at) {
            Ok(md) if md.file_type().is_symlink() => {
                let shown: PathBuf = comps[..=i].iter().collect();
                return Err(format!(
                    "{} is a symlink; an input's path may not go through one (name the directory it points to, inside the pipeline directory)",
                    shown.display()
                ));
            }
            _ => {}
        }
    }
    Ok(())
}
