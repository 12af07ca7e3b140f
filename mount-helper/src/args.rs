//! Parsing the helper's command line: mount(8)'s external helper convention.
//!
//! ```text
//! mount.dagfs SOURCE DIR [-sfnvrw] [-N NAMESPACE] [-o OPTIONS]... [-t TYPE]
//! ```
//!
//! Flags may come before, between or after the two operands, and may be
//! clustered (`-sfv`); a flag's value may be attached (`-oro`, `-Nns`) or the
//! next argument. Every `-o` adds to one option list, split at commas, in
//! command-line order (`-o a,b -o c` is `a,b,c`); what the options mean is
//! [`crate::options`]'s business. `--` ends the flags.
//!
//! Owns nothing else: no file system access, no environment.

use std::ffi::{OsStr, OsString};

use crate::error::Error;

pub const USAGE: &str =
    "usage: mount.dagfs SOURCE DIR [-sfnvrw] [-N NAMESPACE] [-o OPTIONS]... [-t TYPE]";

/// One parsed invocation: the operands, the flags, and every `-o` option.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Invocation {
    /// The store directory (mount(8)'s "spec").
    pub source: OsString,
    /// The mount point.
    pub dir: OsString,
    /// `-s`: ignore unknown options instead of failing.
    pub sloppy: bool,
    /// `-f`: do everything but the mount.
    pub fake: bool,
    /// `-n`: do not write /etc/mtab (dagfs never does).
    pub no_mtab: bool,
    /// `-v`: say what is done.
    pub verbose: bool,
    /// `-r`: read-only (dagfs always is).
    pub read_only: bool,
    /// `-w`: read-write, which dagfs refuses.
    pub read_write: bool,
    /// `-N NS`: the mount namespace to mount in (a path or a pid).
    pub namespace: Option<OsString>,
    /// `-t TYPE`: the full type, passed by mount(8) for `type.subtype`.
    pub fs_type: Option<String>,
    /// Every comma-separated `-o` option, in order; empty ones dropped.
    pub options: Vec<String>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    Mount(Invocation),
    Help,
    Version,
}

/// Parses the arguments after the program name.
pub fn parse<I>(args: I) -> Result<Parsed, Error>
where
    I: IntoIterator<Item = OsString>,
{
    let mut inv = Invocation::default();
    let mut operands: Vec<OsString> = Vec::new();
    let mut args = args.into_iter();
    let mut flags_done = false;

    while let Some(arg) = args.next() {
        let bytes = arg.as_encoded_bytes();
        if flags_done || bytes.len() < 2 || bytes[0] != b'-' {
            operands.push(arg);
            continue;
        }
        if bytes == b"--" {
            flags_done = true;
            continue;
        }
        if bytes.starts_with(b"--") {
            match bytes {
                b"--help" => return Ok(Parsed::Help),
                b"--version" => return Ok(Parsed::Version),
                _ => {
                    return Err(Error::Usage(format!(
                        "unknown flag `{}`",
                        arg.to_string_lossy()
                    )))
                }
            }
        }

        // A cluster of short flags. NB: only ASCII flag letters exist, so
        // walking bytes is exact; a value is the rest of the cluster (which
        // may hold any bytes) or the next argument.
        let cluster = &bytes[1..];
        let mut i = 0;
        while i < cluster.len() {
            let flag = cluster[i];
            i += 1;
            match flag {
                b's' => inv.sloppy = true,
                b'f' => inv.fake = true,
                b'n' => inv.no_mtab = true,
                b'v' => inv.verbose = true,
                b'r' => inv.read_only = true,
                b'w' => inv.read_write = true,
                b'h' => return Ok(Parsed::Help),
                b'V' => return Ok(Parsed::Version),
                b'o' | b'N' | b't' => {
                    let value = if i < cluster.len() {
                        let rest = os_from_tail(&arg, 1 + i);
                        i = cluster.len();
                        rest
                    } else {
                        args.next().ok_or_else(|| {
                            Error::Usage(format!("flag `-{}` needs a value", flag as char))
                        })?
                    };
                    match flag {
                        b'o' => {
                            let text = value.into_string().map_err(|v| {
                                Error::NotUtf8(format!("option list `{}`", v.to_string_lossy()))
                            })?;
                            inv.options.extend(
                                text.split(',')
                                    .map(str::trim)
                                    .filter(|o| !o.is_empty())
                                    .map(str::to_owned),
                            );
                        }
                        b'N' => inv.namespace = Some(value),
                        _ => {
                            let text = value.into_string().map_err(|v| {
                                Error::NotUtf8(format!("type `{}`", v.to_string_lossy()))
                            })?;
                            inv.fs_type = Some(text);
                        }
                    }
                }
                other => {
                    return Err(Error::Usage(format!(
                        "unknown flag `-{}`",
                        String::from_utf8_lossy(&[other])
                    )))
                }
            }
        }
    }

    match <[OsString; 2]>::try_from(operands) {
        Ok([source, dir]) => {
            inv.source = source;
            inv.dir = dir;
            Ok(Parsed::Mount(inv))
        }
        Err(operands) => Err(Error::Usage(if operands.len() < 2 {
            "expected two operands: SOURCE (the store directory) and DIR (the mount point)"
                .to_owned()
        } else {
            let extra: Vec<String> = operands[2..]
                .iter()
                .map(|o| format!("`{}`", o.to_string_lossy()))
                .collect();
            format!(
                "expected two operands, SOURCE and DIR; unexpected {}",
                extra.join(" ")
            )
        })),
    }
}

/// The part of `arg` from byte `start` on, where `start` follows an ASCII
/// byte of it.
fn os_from_tail(arg: &OsStr, start: usize) -> OsString {
    use std::os::unix::ffi::OsStrExt;
    OsStr::from_bytes(&arg.as_bytes()[start..]).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_strs(args: &[&str]) -> Result<Parsed, Error> {
        parse(args.iter().map(OsString::from))
    }

    fn inv(args: &[&str]) -> Invocation {
        match parse_strs(args) {
            Ok(Parsed::Mount(inv)) => inv,
            other => panic!("{args:?}: expected an invocation, got {other:?}"),
        }
    }

    #[test]
    fn operands_and_flags_in_any_order_parse_the_same() {
        let orders: &[&[&str]] = &[
            &[
                "/store",
                "/mnt",
                "-s",
                "-f",
                "-n",
                "-v",
                "-o",
                "allow_other",
            ],
            &["-sfnv", "-o", "allow_other", "/store", "/mnt"],
            &["-v", "/store", "-oallow_other", "-fn", "/mnt", "-s"],
            &["/store", "-o", "allow_other", "/mnt", "-vnfs"],
        ];
        let first = inv(orders[0]);
        assert_eq!(first.source, "/store");
        assert_eq!(first.dir, "/mnt");
        assert!(first.sloppy && first.fake && first.no_mtab && first.verbose);
        assert_eq!(first.options, ["allow_other"]);
        for args in &orders[1..] {
            assert_eq!(inv(args), first, "{args:?}");
        }
    }

    #[test]
    fn every_o_merges_into_one_list_in_order() {
        let got = inv(&["/s", "/m", "-o", "a,b", "-o", "c", "-od=1,,e"]);
        assert_eq!(got.options, ["a", "b", "c", "d=1", "e"]);
    }

    #[test]
    fn tolerates_r_w_namespace_and_type() {
        let got = inv(&["/s", "/m", "-r", "-w", "-N", "/proc/1/fd/3", "-tdagfs.x"]);
        assert!(got.read_only && got.read_write);
        assert_eq!(got.namespace.as_deref(), Some(OsStr::new("/proc/1/fd/3")));
        assert_eq!(got.fs_type.as_deref(), Some("dagfs.x"));
    }

    #[test]
    fn double_dash_ends_flags() {
        let got = inv(&["-v", "--", "-odd-store", "/m"]);
        assert!(got.verbose);
        assert_eq!(got.source, "-odd-store");
        assert!(got.options.is_empty());
    }

    #[test]
    fn help_and_version() {
        assert_eq!(parse_strs(&["--help"]).unwrap(), Parsed::Help);
        assert_eq!(parse_strs(&["/s", "-h"]).unwrap(), Parsed::Help);
        assert_eq!(parse_strs(&["-V"]).unwrap(), Parsed::Version);
    }

    #[test]
    fn malformed_command_lines_are_usage_errors_naming_the_problem() {
        for (args, needle) in [
            (&["/s"][..], "two operands"),
            (&["/s", "/m", "/x"][..], "`/x`"),
            (&["/s", "/m", "-x"][..], "`-x`"),
            (&["/s", "/m", "--bind"][..], "`--bind`"),
            (&["/s", "/m", "-o"][..], "`-o` needs a value"),
        ] {
            let err = parse_strs(args).unwrap_err();
            assert!(matches!(err, Error::Usage(_)), "{args:?}: {err:?}");
            assert!(err.to_string().contains(needle), "{args:?}: {err}");
        }
    }

    #[test]
    fn a_non_utf8_option_is_refused() {
        use std::os::unix::ffi::OsStringExt;
        let args = vec![
            OsString::from("/s"),
            OsString::from("/m"),
            OsString::from("-o"),
            OsString::from_vec(b"allow_\xffother".to_vec()),
        ];
        assert!(matches!(parse(args), Err(Error::NotUtf8(_))));
    }
}
