//! A small pass that lists nothing: the content of a few files changed, and
//! every directory on their way still has the names the stat cache last
//! recorded for it, so its entries are the previous tree's, the changed
//! files examined again. A watched edit of a file took most of its walk to
//! re-list the root and each directory down to the file through `ignore`.
//!
//! Why the names stand: a directory's record holds its stat from just
//! before the listing that produced its tree, and no entry is created,
//! removed or renamed in a directory without changing its mtime (the rule
//! the stat cache's validation rests on, as git's untracked cache). So a
//! directory whose stat (and its ignore files' stats) equal a record that
//! is not racy, and whose recorded tree is the previous tree's, lists as
//! that tree does. A change made after the stat was taken changes the
//! directory's mtime and brings its own event: the next pass, and any
//! later validation, sees the difference. Filters apply as they did: the
//! files kept passed them when listed, and an ignore file that changed
//! changes its stat. Otherwise (a record that differs, a dirty path that
//! was not a file of the previous tree, a skipped path under a directory
//! on the way, an ignore file that is a symlink, `--skip-unreadable`, a
//! mount or unmount since the last pass: `Plan::watched`), the pass walks
//! as before. Such a pass reports no special or unreadable files: those
//! are found by listing.
//!
//! May call: `store` (trees), `index` (stat cache).

use std::ffi::OsStr;

use super::*;

/// Each directory `plan` re-lists, with its stats now, if the pass can take
/// its names from the previous tree (see the module doc); None to walk.
pub(super) fn names_stand(
    stat_cache: &StatCache,
    root: &Path,
    opts: &ScanOptions,
    plan: &Plan,
) -> Result<Option<HashMap<PathBuf, Seen>>, SyncError> {
    let was_file = |p: &Path| {
        let (Some(parent), Some(name)) = (p.parent(), p.file_name()) else {
            return false;
        };
        let old = plan
            .partial
            .get(parent)
            .and_then(|t| t.find(name.as_bytes()));
        matches!(old.map(|e| &e.node), Some(Node::File { .. }))
    };
    let changed_files = plan
        .dirty
        .iter()
        .all(|p| plan.partial.contains_key(p) || (plan.whole.contains(p) && was_file(p)));
    let skips_under = opts
        .skip
        .iter()
        .any(|s| s.parent().is_some_and(|p| plan.partial.contains_key(p)));
    // NB: a file skipped as unreadable is in no tree and no record, yet
    // its directory's record must not vouch for it: only a listing sees
    // it again (and then no root record is written).
    if !changed_files || skips_under || opts.skip_unreadable {
        return Ok(None);
    }
    let mut seen = HashMap::new();
    for (dir, tree) in &plan.partial {
        let rel = dir.strip_prefix(root).unwrap_or(dir).as_os_str().as_bytes();
        let head = &stat_cache.dir(rel)?.head;
        let now = Seen::of(dir);
        // NB: an ignore file that is a symlink: its target's edits change
        // the rules and not its stat.
        let linked = now
            .ignore
            .iter()
            .flatten()
            .any(|m| m.mode & libc::S_IFMT == libc::S_IFLNK);
        let same = !linked
            && head.dir.is_some()
            && !head.dir_racy
            && now.dir == head.dir
            && now.ignore == head.ignore
            && head.tree.map(|t| t.0) == Some(Digest::of(&tree.encode()));
        if !same {
            return Ok(None);
        }
        seen.insert(dir.clone(), now);
    }
    Ok(Some(seen))
}

/// The visit of a pass whose names stand (`names_stand`): each directory
/// the plan re-lists has the previous tree's entries, its subdirectories
/// not on the way kept whole, the changed files examined again.
pub(super) fn visit(
    ctx: &Ctx<'_>,
    plan: &Plan,
    entered: &Entered,
    seen: HashMap<PathBuf, Seen>,
) -> Result<(), SyncError> {
    let mut v = Visitor {
        ctx,
        part: Part::default(),
        dir: None,
        recs: None,
    };
    let mut kept = Vec::new();
    for (dir, tree) in &plan.partial {
        v.part.dirs.push(dir.clone());
        let mut entries = Vec::with_capacity(tree.entries.len());
        for e in &tree.entries {
            let path = dir.join(OsStr::from_bytes(&e.name));
            match &e.node {
                // NB: built from its own entries (`build_trees`).
                Node::Dir { .. } if plan.partial.contains_key(&path) => {}
                Node::Dir { .. } => kept.push((dir.clone(), e.clone())),
                Node::File { .. } if plan.dirty.contains(&path) => {
                    // None: gone since its event (its own event follows).
                    if let Some(node) = v.file(&path)? {
                        entries.push(TreeEntry {
                            name: e.name.clone(),
                            node,
                        });
                    }
                }
                _ => entries.push(e.clone()),
            }
        }
        v.part.groups.insert(dir.clone(), entries);
    }
    lock(&entered.kept).extend(kept);
    lock(&entered.seen).extend(seen);
    Ok(())
}
