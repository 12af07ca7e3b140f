//! Finding the `dagfs` executable the helper runs.
//!
//! In order: next to the helper's own executable (so a helper and a `dagfs`
//! installed or built together stay together), then each directory of
//! `$PATH`, then `/usr/local/bin/dagfs` and `/usr/bin/dagfs`. NB: util-linux
//! mount(8) removes `$PATH` from a helper's environment, so under mount(8),
//! fstab or systemd only the first and last steps apply. The first regular
//! file with an execute bit wins. Reads the file system only.

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::error::Error;

/// The fixed places looked at last.
pub const FALLBACKS: &[&str] = &["/usr/local/bin/dagfs", "/usr/bin/dagfs"];

/// Finds `dagfs`: next to `own_exe`, then in `path_var`, then `fallbacks`.
pub fn find_dagfs(
    own_exe: Option<&Path>,
    path_var: Option<&OsStr>,
    fallbacks: &[&str],
) -> Result<PathBuf, Error> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(dir) = own_exe.and_then(Path::parent) {
        candidates.push(dir.join("dagfs"));
    }
    if let Some(path_var) = path_var {
        candidates.extend(
            std::env::split_paths(path_var)
                // An empty `$PATH` entry means the working directory; a
                // helper running as root must not pick up `./dagfs`.
                .filter(|dir| dir.is_absolute())
                .map(|dir| dir.join("dagfs")),
        );
    }
    candidates.extend(fallbacks.iter().map(PathBuf::from));

    let mut searched: Vec<PathBuf> = Vec::new();
    for candidate in candidates {
        if is_executable(&candidate) {
            return Ok(candidate);
        }
        if !searched.contains(&candidate) {
            searched.push(candidate);
        }
    }
    Err(Error::DagfsNotFound { searched })
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;
    use std::fs;

    /// A fresh empty directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            use std::sync::atomic::{AtomicUsize, Ordering};
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir()
                .join(format!("mount-dagfs-test-{}-{tag}-{n}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn file(dir: &Path, name: &str, mode: u32) -> PathBuf {
        let path = dir.join(name);
        fs::write(&path, "#!/bin/sh\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn next_to_the_helper_comes_first() {
        let own = TempDir::new("own");
        let on_path = TempDir::new("path");
        let helper = file(&own.0, "mount.dagfs", 0o755);
        let beside = file(&own.0, "dagfs", 0o755);
        file(&on_path.0, "dagfs", 0o755);
        let path_var = OsString::from(&on_path.0);
        let got = find_dagfs(Some(&helper), Some(&path_var), &[]).unwrap();
        assert_eq!(got, beside);
    }

    #[test]
    fn then_path_in_order_skipping_non_executables_and_relative_entries() {
        let own = TempDir::new("own");
        let a = TempDir::new("a");
        let b = TempDir::new("b");
        let helper = file(&own.0, "mount.dagfs", 0o755);
        file(&a.0, "dagfs", 0o644);
        let wanted = file(&b.0, "dagfs", 0o755);
        let path_var = std::env::join_paths([Path::new("."), &a.0, &b.0]).unwrap();
        let got = find_dagfs(Some(&helper), Some(&path_var), &[]).unwrap();
        assert_eq!(got, wanted);
    }

    #[test]
    fn then_the_fallbacks() {
        let fallback = TempDir::new("fallback");
        let wanted = file(&fallback.0, "dagfs", 0o755);
        let missing = fallback.0.join("missing/dagfs");
        let got = find_dagfs(
            None,
            None,
            &[missing.to_str().unwrap(), wanted.to_str().unwrap()],
        )
        .unwrap();
        assert_eq!(got, wanted);
    }

    #[test]
    fn not_found_names_every_place_looked_at() {
        let own = TempDir::new("own");
        let empty = TempDir::new("empty");
        let helper = own.0.join("mount.dagfs");
        let path_var = OsString::from(&empty.0);
        let err = find_dagfs(Some(&helper), Some(&path_var), &["/nonexistent/dagfs"]).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::DagfsNotFound { .. }));
        for place in [own.0.join("dagfs"), empty.0.join("dagfs")] {
            assert!(msg.contains(&*place.to_string_lossy()), "{msg}");
        }
        assert!(msg.contains("/nonexistent/dagfs"), "{msg}");
    }
}
