//! Turning a parsed, normalized invocation into the `dagfs` command it runs.
//!
//! ```text
//! [nsenter --mount=NS --] DAGFS --store STORE mount DIR [-o OPTIONS]
//! ```
//!
//! NB: the helper's `-f` (fake) is never passed on: `dagfs mount -f` means
//! "stay in the foreground", and the helper wants the detached mode, which
//! returns once the mount is live. `-N NS` (mount(8) runs a helper in its
//! original namespace and passes the target one) is entered with util-linux
//! `nsenter`. Pure: no file system access.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use crate::args::Invocation;
use crate::options::Normalized;

/// The store to mount: the last `store=PATH`, else SOURCE.
pub fn store_path(inv: &Invocation, norm: &Normalized) -> PathBuf {
    match &norm.store {
        Some(store) => PathBuf::from(store),
        None => PathBuf::from(&inv.source),
    }
}

/// The command to run, program first. `store` and `dir` are absolute.
pub fn command(
    inv: &Invocation,
    norm: &Normalized,
    dagfs: &Path,
    store: &Path,
    dir: &Path,
) -> Vec<OsString> {
    let mut argv: Vec<OsString> = Vec::new();
    if let Some(ns) = &inv.namespace {
        argv.push("nsenter".into());
        let mut flag = OsString::from("--mount=");
        flag.push(namespace_path(ns));
        argv.push(flag);
        argv.push("--".into());
    }
    argv.push(dagfs.into());
    argv.push("--store".into());
    argv.push(store.into());
    argv.push("mount".into());
    argv.push(dir.into());
    if !norm.forward.is_empty() {
        argv.push("-o".into());
        argv.push(norm.forward.join(",").into());
    }
    argv
}

/// What `-v` says besides the command: what was dropped or ignored, and why.
pub fn notes(inv: &Invocation, norm: &Normalized) -> Vec<String> {
    let mut notes = Vec::new();
    if let Some(store) = &norm.store {
        if OsStr::new(store) != inv.source {
            notes.push(format!(
                "store={store} given: mounting it, not SOURCE {}",
                inv.source.to_string_lossy()
            ));
        }
    }
    for (option, why) in &norm.dropped {
        notes.push(format!("not passing `{option}` on: {why}"));
    }
    for option in &norm.ignored {
        notes.push(format!("ignoring unknown option `{option}` (-s)"));
    }
    if let Some(fs_type) = &inv.fs_type {
        notes.push(format!("type {fs_type}: mounting as fuse.dagfs"));
    }
    notes
}

/// `-N`'s value: a namespace file, or the pid of a process in it.
fn namespace_path(ns: &OsStr) -> OsString {
    let bytes = ns.as_encoded_bytes();
    if !bytes.is_empty() && bytes.iter().all(u8::is_ascii_digit) {
        let mut path = OsString::from("/proc/");
        path.push(ns);
        path.push("/ns/mnt");
        path
    } else {
        ns.to_owned()
    }
}

/// `argv` as a shell would need it typed, for `-v`.
pub fn shell_line(argv: &[OsString]) -> String {
    let words: Vec<String> = argv
        .iter()
        .map(|word| {
            let word = word.to_string_lossy();
            let plain = !word.is_empty()
                && word
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-./=,:@%+".contains(&b));
            if plain {
                word.into_owned()
            } else {
                format!("'{}'", word.replace('\'', r"'\''"))
            }
        })
        .collect();
    words.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::{parse, Parsed};
    use crate::options::normalize;

    /// Parses and normalizes `args` as a direct invocation would, then plans.
    fn plan(args: &[&str], rw_is_mount_default: bool) -> (Vec<OsString>, Vec<String>) {
        let Parsed::Mount(inv) = parse(args.iter().map(OsString::from)).unwrap() else {
            panic!("{args:?}: not a mount invocation");
        };
        let norm = normalize(&inv.options, inv.sloppy, rw_is_mount_default).unwrap();
        let store = store_path(&inv, &norm);
        let argv = command(
            &inv,
            &norm,
            Path::new("/bin/dagfs"),
            &store,
            Path::new(&inv.dir),
        );
        (argv, notes(&inv, &norm))
    }

    fn strs(argv: &[OsString]) -> Vec<&str> {
        argv.iter().map(|a| a.to_str().unwrap()).collect()
    }

    #[test]
    fn runs_dagfs_mount_detached_with_the_normalized_options() {
        let (argv, _) = plan(
            &[
                "/var/cache/dagfs",
                "/mnt/dagfs",
                "-o",
                "allow_other,passthrough=auto",
            ],
            false,
        );
        assert_eq!(
            strs(&argv),
            [
                "/bin/dagfs",
                "--store",
                "/var/cache/dagfs",
                "mount",
                "/mnt/dagfs",
                "-o",
                "allow_other,passthrough=auto"
            ]
        );
    }

    #[test]
    fn the_fstab_line_as_mount8_passes_it() {
        // `/var/cache/dagfs /mnt/dagfs dagfs defaults,allow_other,nofail 0 0`
        // reaches the helper as `-o rw,allow_other,nofail`.
        let (argv, notes) = plan(
            &[
                "/var/cache/dagfs",
                "/mnt/dagfs",
                "-o",
                "rw,allow_other,nofail",
            ],
            true,
        );
        assert_eq!(
            strs(&argv),
            [
                "/bin/dagfs",
                "--store",
                "/var/cache/dagfs",
                "mount",
                "/mnt/dagfs",
                "-o",
                "allow_other"
            ]
        );
        assert!(notes.iter().any(|n| n.contains("`nofail`")), "{notes:?}");
    }

    #[test]
    fn no_options_left_means_no_o() {
        let (argv, _) = plan(&["/s", "/m", "-o", "defaults,x-systemd.automount"], false);
        assert_eq!(strs(&argv), ["/bin/dagfs", "--store", "/s", "mount", "/m"]);
    }

    #[test]
    fn fake_and_the_other_helper_flags_are_never_passed_on() {
        let (argv, _) = plan(&["-sfnvr", "/s", "/m", "-t", "dagfs", "-o", "debug"], false);
        assert_eq!(
            strs(&argv),
            ["/bin/dagfs", "--store", "/s", "mount", "/m", "-o", "debug"]
        );
    }

    #[test]
    fn store_option_takes_precedence_over_source() {
        let (argv, notes) = plan(
            &[
                "dagfs",
                "/m",
                "-o",
                "store=/a,allow_other",
                "-o",
                "store=/b",
            ],
            false,
        );
        assert_eq!(
            strs(&argv),
            [
                "/bin/dagfs",
                "--store",
                "/b",
                "mount",
                "/m",
                "-o",
                "allow_other"
            ]
        );
        assert!(notes.iter().any(|n| n.contains("store=/b")), "{notes:?}");
    }

    #[test]
    fn a_namespace_is_entered_with_nsenter() {
        let (argv, _) = plan(&["/s", "/m", "-N", "/proc/42/fd/7"], false);
        assert_eq!(
            strs(&argv),
            [
                "nsenter",
                "--mount=/proc/42/fd/7",
                "--",
                "/bin/dagfs",
                "--store",
                "/s",
                "mount",
                "/m"
            ]
        );
        let (argv, _) = plan(&["/s", "/m", "-N42"], false);
        assert_eq!(strs(&argv)[1], "--mount=/proc/42/ns/mnt");
    }

    #[test]
    fn shell_line_quotes_only_what_needs_it() {
        let argv: Vec<OsString> = ["/bin/dagfs", "--store", "/my store", "it's", ""]
            .iter()
            .map(OsString::from)
            .collect();
        assert_eq!(
            shell_line(&argv),
            r"/bin/dagfs --store '/my store' 'it'\''s' ''"
        );
    }
}
