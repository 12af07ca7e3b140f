//! The names users give things: pipelines and tasks (`[tasks.<name>]`,
//! `name = `) and synced directories (`dagfs sync --name`). Each becomes a
//! path component under the mount (`/dags/<dag>/<task>`, `/syncs/<name>`),
//! a key in the index and, for a sync, a file under `<store>/syncs/`.
//!
//! Owns: the rules, in one place for every layer that takes or shows a
//! name. May call: nothing. (Names of files *inside* a stored tree follow
//! `tree::name_problem`, a different rule.)

use std::path::Path;

/// The longest name a task or pipeline may have.
pub const MAX_NAME: usize = 128;

/// Characters allowed in task and pipeline names (they become path
/// components under the mount).
pub fn valid_name(s: &str) -> bool {
    name_problem(s).is_none()
}

/// What is wrong with a task or pipeline name, said to the user.
pub fn name_problem(s: &str) -> Option<String> {
    if s.len() > MAX_NAME {
        return Some(format!(
            "is {} bytes long; a name may be at most {MAX_NAME}",
            s.len()
        ));
    }
    let ok = !s.is_empty()
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.+@".contains(&b));
    (!ok).then(|| "may use only letters, digits and `_-.+@`".to_string())
}

/// A sync name: letters, digits and `_-.+`, like task names but without
/// `@` (`/syncs/<name>@<seq>` names one snapshot).
pub fn valid_sync_name(s: &str) -> bool {
    valid_name(s) && !s.contains('@')
}

/// The default name of a synced directory: its base name, cleaned.
pub fn default_sync_name(root: &Path) -> String {
    name_from_path(root, valid_sync_name, "root")
}

/// `path`'s base name with every character `valid` refuses replaced by `_`,
/// or `fallback` if that is still not a valid name.
pub fn name_from_path(path: &Path, valid: fn(&str) -> bool, fallback: &str) -> String {
    let base = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let cleaned: String = base
        .chars()
        .map(|c| if valid(&c.to_string()) { c } else { '_' })
        .collect();
    if valid(&cleaned) {
        cleaned
    } else {
        fallback.into()
    }
}
