//! Materialize a stored tree as a read-only directory (a task's
//! `$DAGFS_IN/<dep>` until a FUSE mount serves it).
//!
//! NB: files are *copied* by `Store::copy_blob`, which hashes the bytes as
//! it copies them (a mismatch is `Corrupt`, and the copy is removed), never
//! hard-linked: a task running as root could write through a 0444 link and
//! corrupt the blob.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use super::error::{IoContext, Result, StoreError};
use super::tree::{Node, Tree};
use super::unsynced::Unsynced;
use super::{os, Store};
use crate::hash::Digest;

pub fn materialize(store: &Store, tree: &Digest, dest: &Path) -> Result<()> {
    materialize_from(store, None, tree, dest)
}

/// `materialize`, reading blobs `unsynced` holds (a run's staged outputs,
/// not committed yet) from there, checked alike.
pub fn materialize_from(
    store: &Store,
    unsynced: Option<&Unsynced>,
    tree: &Digest,
    dest: &Path,
) -> Result<()> {
    fs::create_dir_all(dest).at(dest)?;
    let mut stack: Vec<(Digest, PathBuf)> = vec![(*tree, dest.to_path_buf())];
    let mut dirs = Vec::new();
    while let Some((digest, dir)) = stack.pop() {
        let tree = match unsynced.map(|u| u.read(&digest)).transpose()?.flatten() {
            Some(bytes) => Tree::decode(&bytes).map_err(|e| StoreError::Corrupt {
                digest,
                path: dir.clone(),
                reason: format!("bad staged tree: {e}"),
            })?,
            None => store.read_tree(&digest)?,
        };
        for e in tree.entries {
            let path = dir.join(os(&e.name));
            match e.node {
                Node::Dir { digest } => {
                    fs::create_dir(&path).at(&path)?;
                    stack.push((digest, path));
                }
                Node::Symlink { target } => symlink(os(&target), &path).at(&path)?,
                Node::File { digest, exec, .. } => {
                    if !unsynced
                        .map(|u| u.copy(&digest, &path))
                        .transpose()?
                        .unwrap_or(false)
                    {
                        store.copy_blob(&digest, &path)?;
                    }
                    let mode = if exec { 0o555 } else { 0o444 };
                    fs::set_permissions(&path, fs::Permissions::from_mode(mode)).at(&path)?;
                }
            }
        }
        dirs.push(dir);
    }
    for d in dirs.iter().rev() {
        fs::set_permissions(d, fs::Permissions::from_mode(0o555)).at(d)?;
    }
    Ok(())
}
