//! The helper's one error type, and the one place errors become exit codes.
//!
//! Exit codes follow mount(8)'s (see its "RETURN CODES"), since mount(8)
//! passes a helper's status on as its own: 1 for a bad invocation or a
//! refused option, 2 when `dagfs` cannot be found or started, 32 when the
//! mount cannot happen (a missing store or mount point). Once `dagfs` runs,
//! its own exit status is the helper's.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// mount(8)'s "incorrect invocation or permissions".
pub const EX_USAGE: u8 = 1;
/// mount(8)'s "system error": here, `dagfs` could not be found or started.
pub const EX_SYSERR: u8 = 2;
/// mount(8)'s "mount failure".
pub const EX_FAIL: u8 = 32;

#[derive(Debug)]
pub enum Error {
    /// The command line itself is malformed (unknown flag, missing operand).
    Usage(String),
    /// `rw` or `-w`: dagfs is a read-only filesystem.
    ReadWrite { how: &'static str },
    /// Options this helper does not know, named, without `-s`.
    UnknownOptions(Vec<String>),
    /// A known option with a value it cannot take.
    BadValue {
        option: String,
        expected: &'static str,
    },
    /// An option that is not UTF-8: no dagfs option is.
    NotUtf8(String),
    /// The store (SOURCE, or `store=`) is not a directory.
    NoStore { path: PathBuf, err: io::Error },
    /// The mount point is not a directory.
    NoMountPoint { path: PathBuf, err: io::Error },
    /// No `dagfs` executable in any of the places searched, in order.
    DagfsNotFound { searched: Vec<PathBuf> },
    /// `dagfs` (or `nsenter`) was found but could not be executed.
    Exec { program: PathBuf, err: io::Error },
}

impl Error {
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_)
            | Error::ReadWrite { .. }
            | Error::UnknownOptions(_)
            | Error::BadValue { .. }
            | Error::NotUtf8(_) => EX_USAGE,
            Error::NoStore { .. } | Error::NoMountPoint { .. } => EX_FAIL,
            Error::DagfsNotFound { .. } | Error::Exec { .. } => EX_SYSERR,
        }
    }

    /// Whether the usage line helps the reader of this error.
    pub fn wants_usage(&self) -> bool {
        matches!(self, Error::Usage(_))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Usage(msg) => f.write_str(msg),
            Error::ReadWrite { how } => write!(
                f,
                "{how} asks for a read-write mount, but dagfs is a read-only filesystem \
                 (use `ro`, or leave it out: dagfs always mounts read-only)"
            ),
            Error::UnknownOptions(names) => {
                let list: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
                let noun = if names.len() == 1 {
                    "option"
                } else {
                    "options"
                };
                write!(
                    f,
                    "unknown mount {noun} {} (`-s` ignores unknown options)",
                    list.join(", ")
                )
            }
            Error::BadValue { option, expected } => {
                write!(f, "bad mount option `{option}`: expected {expected}")
            }
            Error::NotUtf8(what) => write!(f, "{what} is not valid UTF-8"),
            Error::NoStore { path, err } => write!(
                f,
                "store {}: {err} (the store is SOURCE, or `-o store=PATH`; \
                 create it with `mkdir -p {}` or a first `dagfs --store {} run`)",
                path.display(),
                path.display(),
                path.display()
            ),
            Error::NoMountPoint { path, err } => {
                write!(f, "mount point {}: {err}", path.display())
            }
            Error::DagfsNotFound { searched } => {
                let list: Vec<String> = searched.iter().map(|p| p.display().to_string()).collect();
                write!(
                    f,
                    "cannot find the `dagfs` executable; looked at {} \
                     (install it with `scripts/install`, or put it next to this helper)",
                    list.join(", ")
                )
            }
            Error::Exec { program, err } => {
                write!(f, "cannot run {}: {err}", program.display())
            }
        }
    }
}

impl std::error::Error for Error {}
