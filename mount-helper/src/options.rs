//! Validating and normalizing `-o` options into what `dagfs mount -o` takes.
//!
//! | option | what the helper does |
//! |---|---|
//! | `allow_other`, `debug`, `nonempty` | passed on (`dagfs` pairs `allow_other` with `default_permissions`) |
//! | `passthrough=auto\|on\|off`, `threads=N`, `verify=first-open\|always\|off`, `remote_timeout=DURATION` | checked (a duration: digits and a unit; `dagfs` checks the unit), passed on; the last one given wins |
//! | `nosuid`, `nodev`, `noexec`/`exec`, `noatime`/`relatime` | passed on (`dagfs` accepts them); of a pair, the last wins |
//! | `store=PATH` | the store, instead of SOURCE; the last one wins; not passed on (it becomes `--store`) |
//! | `ro`, `default_permissions` | dropped: dagfs is always read-only, and adds `default_permissions` itself |
//! | `defaults`, `auto`, `noauto`, `user`, `users`, `nouser`, `nofail`, `_netdev`, `comment=…`, `x-*` | dropped: they are for mount(8), fstab and systemd |
//! | `rw` | an error, unless mount(8) passed it (see below) |
//! | anything else | an error naming every such option; dropped with `-s` |
//!
//! NB: util-linux mount(8) always hands a helper `rw` or `ro`, from its own
//! flags: `mount -t dagfs SRC DIR` and an fstab line without `ro` reach the
//! helper as `-o rw,…`, exactly like an explicit `-o rw`. So when mount(8) is
//! the caller, `rw` is taken as its default and dropped (the mount is
//! read-only either way); called any other way, `rw` is refused.
//!
//! The result is deterministic: options in the order of their first
//! appearance, duplicates merged, so the same fstab line always runs the same
//! `dagfs` command. Pure: no file system access.

use crate::error::Error;

/// The options, sorted into what `dagfs` gets and what it does not.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Normalized {
    /// `store=PATH`, the last one given.
    pub store: Option<String>,
    /// The options for `dagfs mount -o`, in order of first appearance.
    pub forward: Vec<String>,
    /// Known options not passed on, each with the reason (for `-v`).
    pub dropped: Vec<(String, &'static str)>,
    /// Unknown options, ignored because of `-s`.
    pub ignored: Vec<String>,
}

/// How the helper treats one known option name.
enum Class {
    /// Passed on, without a value. Options sharing a slot replace each other.
    Flag { slot: &'static str },
    /// Passed on, with a value `valid` accepts.
    Value {
        expected: &'static str,
        valid: fn(&str) -> bool,
    },
    /// `store=PATH`.
    Store,
    /// Accepted, not passed on.
    Drop(&'static str),
    /// `rw`.
    ReadWrite,
}

const FOR_MOUNT: &str = "for mount(8), fstab and systemd, not dagfs";

fn classify(name: &str) -> Option<Class> {
    Some(match name {
        "allow_other" => Class::Flag {
            slot: "allow_other",
        },
        "debug" => Class::Flag { slot: "debug" },
        "nonempty" => Class::Flag { slot: "nonempty" },
        "nosuid" => Class::Flag { slot: "nosuid" },
        "nodev" => Class::Flag { slot: "nodev" },
        "noexec" | "exec" => Class::Flag { slot: "exec" },
        "noatime" | "relatime" => Class::Flag { slot: "atime" },
        "passthrough" => Class::Value {
            expected: "`passthrough=auto`, `passthrough=on` or `passthrough=off`",
            valid: |v| matches!(v, "auto" | "on" | "off"),
        },
        "verify" => Class::Value {
            expected: "`verify=first-open`, `verify=always` or `verify=off`",
            valid: |v| matches!(v, "first-open" | "always" | "off"),
        },
        "threads" => Class::Value {
            expected: "`threads=N` with N a whole number from 1 up",
            valid: |v| v.parse::<u32>().is_ok_and(|n| n > 0),
        },
        "remote_timeout" => Class::Value {
            expected: "`remote_timeout=DURATION`, e.g. `500ms` or `5s`",
            valid: |v| {
                let n = v.trim_end_matches(|c: char| c.is_ascii_alphabetic());
                n != v && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())
            },
        },
        "store" => Class::Store,
        "ro" => Class::Drop("dagfs always mounts read-only"),
        "default_permissions" => Class::Drop("dagfs adds it with allow_other"),
        "defaults" | "auto" | "noauto" | "user" | "users" | "nouser" | "nofail" | "_netdev"
        | "comment" => Class::Drop(FOR_MOUNT),
        _ if name.starts_with("x-") => Class::Drop(FOR_MOUNT),
        "rw" => Class::ReadWrite,
        _ => return None,
    })
}

/// Sorts `options` (as [`crate::args`] split them). `sloppy` is `-s`;
/// `rw_is_mount_default` says mount(8) is the caller (see the module doc).
pub fn normalize(
    options: &[String],
    sloppy: bool,
    rw_is_mount_default: bool,
) -> Result<Normalized, Error> {
    let mut out = Normalized::default();
    // (slot, option) pairs; a later option in a slot replaces the earlier.
    let mut slots: Vec<(&str, String)> = Vec::new();
    let mut unknown: Vec<String> = Vec::new();

    for option in options {
        let (name, value) = match option.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (option.as_str(), None),
        };
        let bad = |expected| Error::BadValue {
            option: option.clone(),
            expected,
        };
        match classify(name) {
            Some(Class::Flag { slot }) => {
                if value.is_some() {
                    return Err(bad("no value"));
                }
                put(&mut slots, slot, option.clone());
            }
            Some(Class::Value { expected, valid }) => match value {
                Some(v) if valid(v) => put(&mut slots, name, option.clone()),
                _ => return Err(bad(expected)),
            },
            Some(Class::Store) => match value {
                Some(path) if !path.is_empty() => out.store = Some(path.to_owned()),
                _ => return Err(bad("`store=PATH`")),
            },
            Some(Class::Drop(why)) => {
                if !out.dropped.iter().any(|(o, _)| o == option) {
                    out.dropped.push((option.clone(), why));
                }
            }
            Some(Class::ReadWrite) => {
                if value.is_some() {
                    return Err(bad("no value"));
                }
                if !rw_is_mount_default {
                    return Err(Error::ReadWrite { how: "option `rw`" });
                }
                if !out.dropped.iter().any(|(o, _)| o == option) {
                    out.dropped.push((
                        option.clone(),
                        "mount(8)'s default; dagfs always mounts read-only",
                    ));
                }
            }
            None => {
                if !unknown.contains(option) {
                    unknown.push(option.clone());
                }
            }
        }
    }

    if !unknown.is_empty() && !sloppy {
        return Err(Error::UnknownOptions(unknown));
    }
    out.ignored = unknown;
    out.forward = slots.into_iter().map(|(_, option)| option).collect();
    Ok(out)
}

fn put<'a>(slots: &mut Vec<(&'a str, String)>, slot: &'a str, option: String) {
    match slots.iter_mut().find(|(s, _)| *s == slot) {
        Some(entry) => entry.1 = option,
        None => slots.push((slot, option)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(list: &str) -> Vec<String> {
        list.split(',')
            .filter(|o| !o.is_empty())
            .map(str::to_owned)
            .collect()
    }

    fn forward(list: &str) -> Vec<String> {
        normalize(&opts(list), false, false).unwrap().forward
    }

    #[test]
    fn dagfs_options_are_passed_on() {
        assert_eq!(
            forward("allow_other,passthrough=off,debug,threads=4"),
            ["allow_other", "passthrough=off", "debug", "threads=4"]
        );
        assert_eq!(forward("verify=always,verify=off"), ["verify=off"]);
        assert_eq!(
            forward("remote_timeout=5s,remote_timeout=500ms"),
            ["remote_timeout=500ms"]
        );
        assert!(normalize(&opts("remote_timeout=5"), false, false).is_err());
        assert!(normalize(&opts("remote_timeout=soon"), false, false).is_err());
        // dagfs refuses a non-empty mount point without it.
        assert_eq!(forward("nonempty"), ["nonempty"]);
        assert!(normalize(&opts("verify=sometimes"), false, false).is_err());
    }

    #[test]
    fn duplicates_merge_and_the_last_value_wins_in_first_place() {
        assert_eq!(
            forward("passthrough=auto,allow_other,passthrough=off,allow_other,noexec,exec"),
            ["passthrough=off", "allow_other", "exec"]
        );
        assert_eq!(forward("relatime,noatime"), ["noatime"]);
    }

    #[test]
    fn fstab_and_systemd_options_are_dropped_not_passed_on() {
        let got = normalize(
            &opts(
                "defaults,auto,noauto,user,users,nouser,nofail,_netdev,x-systemd.automount,\
                 x-systemd.requires=/var,x-gvfs-hide,comment=hello,ro,default_permissions,\
                 allow_other",
            ),
            false,
            false,
        )
        .unwrap();
        assert_eq!(got.forward, ["allow_other"]);
        let dropped: Vec<&str> = got.dropped.iter().map(|(o, _)| o.as_str()).collect();
        assert!(dropped.contains(&"x-systemd.automount"), "{dropped:?}");
        assert!(dropped.contains(&"x-systemd.requires=/var"), "{dropped:?}");
        assert!(dropped.contains(&"nofail"), "{dropped:?}");
        assert!(got.ignored.is_empty());
    }

    #[test]
    fn kernel_flags_dagfs_accepts_are_passed_on() {
        assert_eq!(
            forward("nosuid,nodev,noexec,noatime"),
            ["nosuid", "nodev", "noexec", "noatime"]
        );
    }

    #[test]
    fn unknown_options_are_an_error_naming_each_of_them() {
        let err = normalize(&opts("bogus,allow_other,frob=1,bogus"), false, false).unwrap_err();
        match &err {
            Error::UnknownOptions(names) => assert_eq!(names, &["bogus", "frob=1"]),
            other => panic!("{other:?}"),
        }
        let msg = err.to_string();
        assert!(msg.contains("`bogus`") && msg.contains("`frob=1`"), "{msg}");
    }

    #[test]
    fn sloppy_ignores_unknown_options_and_keeps_the_rest() {
        let got = normalize(&opts("bogus,allow_other"), true, false).unwrap();
        assert_eq!(got.forward, ["allow_other"]);
        assert_eq!(got.ignored, ["bogus"]);
    }

    #[test]
    fn sloppy_does_not_excuse_rw_or_a_bad_value() {
        assert!(matches!(
            normalize(&opts("rw"), true, false),
            Err(Error::ReadWrite { .. })
        ));
        assert!(matches!(
            normalize(&opts("passthrough=maybe"), true, false),
            Err(Error::BadValue { .. })
        ));
    }

    #[test]
    fn rw_is_refused_when_asked_for() {
        let err = normalize(&opts("allow_other,rw"), false, false).unwrap_err();
        assert!(matches!(err, Error::ReadWrite { .. }), "{err:?}");
        assert!(err.to_string().contains("read-only"), "{err}");
    }

    #[test]
    fn rw_from_mount8_is_its_default_and_is_dropped() {
        // What `mount -t dagfs -o allow_other SRC DIR` hands the helper.
        let got = normalize(&opts("rw,allow_other"), false, true).unwrap();
        assert_eq!(got.forward, ["allow_other"]);
        assert_eq!(got.dropped[0].0, "rw");
    }

    #[test]
    fn bad_values_name_the_option_and_what_it_takes() {
        for (bad, needle) in [
            ("passthrough=maybe", "passthrough=auto"),
            ("passthrough", "passthrough=auto"),
            ("threads=0", "threads=N"),
            ("threads=many", "threads=N"),
            ("store=", "store=PATH"),
            ("allow_other=1", "no value"),
            ("rw=1", "no value"),
        ] {
            let err = normalize(&opts(bad), false, true).unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, Error::BadValue { .. }), "{bad}: {err:?}");
            assert!(msg.contains(bad) && msg.contains(needle), "{bad}: {msg}");
        }
    }

    #[test]
    fn the_last_store_wins_and_is_not_passed_on() {
        let got = normalize(&opts("store=/a,allow_other,store=/b"), false, false).unwrap();
        assert_eq!(got.store.as_deref(), Some("/b"));
        assert_eq!(got.forward, ["allow_other"]);
    }
}
