//! The stat cache's record: its byte layout and its codec, in one place.
//!
//! Record layout, version 2 (LE integers): version byte; flags (1: has the
//! directory's stat, 2: that stat is racy, 4: complete, every file of its
//! tree has a record, 8: root information follows); the directory's stat if
//! flagged; for `.gitignore` then `.dagfsignore`, a presence byte and a stat;
//! root information if flagged (tree digest, files, bytes, generation);
//! the directory's own tree if flagged (16: digest, files, bytes);
//! subdirectory count (u32) and names (u16 length, bytes); then per file:
//! name length (u16), name, stat, racy (u8), generation (u64), digest. A stat
//! is dev, ino, size, mtime ns, ctime ns (u64 each) and mode (u32). A record
//! that does not decode is treated as absent.

use super::*;

const VERSION: u8 = 2;
const META: usize = 8 * 5 + 4;
const FIXED: usize = META + 1 + 8 + 32;
const F_DIR: u8 = 1;
const F_DIR_RACY: u8 = 2;
const F_COMPLETE: u8 = 4;
const F_ROOT: u8 = 8;
const F_TREE: u8 = 16;

/// What the cache holds for one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileRec {
    pub meta: Meta,
    /// Stamped so close to the scan that recorded it that a later write in
    /// the same clock tick could keep every field: not to be trusted.
    pub racy: bool,
    /// The store's blob generation when `digest` was known to be stored.
    pub generation: u64,
    pub digest: Digest,
}

/// What the walk that wrote the records made of the whole root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RootInfo {
    pub tree: Digest,
    pub files: u64,
    pub bytes: u64,
    pub generation: u64,
}

/// What a record says of its directory as a whole.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Head {
    /// The directory's stat from just before it was listed.
    pub dir: Option<Meta>,
    pub dir_racy: bool,
    /// Every file of the directory's tree has a record here.
    pub complete: bool,
    /// Stats of `IGNORE_FILES` in it (None: absent).
    pub ignore: [Option<Meta>; 2],
    /// The root's record only.
    pub root: Option<RootInfo>,
    /// The directory's tree as that walk stored it: (digest, files, bytes).
    pub tree: Option<(Digest, u64, u64)>,
}

/// One directory's record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct DirRec {
    pub head: Head,
    /// Subdirectories in its tree, sorted.
    pub subdirs: Vec<Vec<u8>>,
    /// Files, sorted by name.
    pub files: Vec<(Vec<u8>, FileRec)>,
}

fn put_meta(v: &mut Vec<u8>, m: &Meta) {
    for x in [m.dev, m.ino, m.size, m.mtime_ns as u64, m.ctime_ns as u64] {
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.extend_from_slice(&m.mode.to_le_bytes());
}

fn get_meta(f: &[u8]) -> Meta {
    let u = |i: usize| u64::from_le_bytes(f[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
    Meta {
        dev: u(0),
        ino: u(1),
        size: u(2),
        mtime_ns: u(3) as i64,
        ctime_ns: u(4) as i64,
        mode: u32::from_le_bytes(f[40..44].try_into().expect("4 bytes")),
    }
}

/// A reader over a record's bytes: None once past the end.
struct Reader<'b>(&'b [u8]);

impl<'b> Reader<'b> {
    fn take(&mut self, n: usize) -> Option<&'b [u8]> {
        let (a, b) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u16(&mut self) -> Option<usize> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?) as usize)
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn meta(&mut self) -> Option<Meta> {
        Some(get_meta(self.take(META)?))
    }
}

impl DirRec {
    pub fn get(&self, name: &[u8]) -> Option<&FileRec> {
        self.files
            .binary_search_by(|(n, _)| n.as_slice().cmp(name))
            .ok()
            .map(|i| &self.files[i].1)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(256 + self.files.len() * (FIXED + 12));
        v.push(VERSION);
        let mut flags = 0;
        if self.head.dir.is_some() {
            flags |= F_DIR;
        }
        if self.head.dir_racy {
            flags |= F_DIR_RACY;
        }
        if self.head.complete {
            flags |= F_COMPLETE;
        }
        if self.head.root.is_some() {
            flags |= F_ROOT;
        }
        if self.head.tree.is_some() {
            flags |= F_TREE;
        }
        v.push(flags);
        if let Some(m) = &self.head.dir {
            put_meta(&mut v, m);
        }
        for m in &self.head.ignore {
            v.push(m.is_some() as u8);
            put_meta(&mut v, &m.unwrap_or(Meta::NONE));
        }
        if let Some(r) = &self.head.root {
            v.extend_from_slice(r.tree.as_bytes());
            for x in [r.files, r.bytes, r.generation] {
                v.extend_from_slice(&x.to_le_bytes());
            }
        }
        if let Some((d, files, bytes)) = &self.head.tree {
            v.extend_from_slice(d.as_bytes());
            for x in [files, bytes] {
                v.extend_from_slice(&x.to_le_bytes());
            }
        }
        v.extend_from_slice(&(self.subdirs.len() as u32).to_le_bytes());
        for name in &self.subdirs {
            let len = u16::try_from(name.len()).expect("names are at most 255 bytes");
            v.extend_from_slice(&len.to_le_bytes());
            v.extend_from_slice(name);
        }
        for (name, r) in &self.files {
            let len = u16::try_from(name.len()).expect("names are at most 255 bytes");
            v.extend_from_slice(&len.to_le_bytes());
            v.extend_from_slice(name);
            put_meta(&mut v, &r.meta);
            v.push(r.racy as u8);
            v.extend_from_slice(&r.generation.to_le_bytes());
            v.extend_from_slice(r.digest.as_bytes());
        }
        v
    }

    /// None: not a record this version wrote (or damaged).
    pub fn decode(b: &[u8]) -> Option<DirRec> {
        let v = DirView::parse(b)?;
        let files = v.files().collect::<Option<Vec<_>>>()?;
        let files: Vec<_> = files.into_iter().map(|(n, r)| (n.to_vec(), r)).collect();
        // Sorted and unique, or it is not ours.
        if files.windows(2).any(|w| w[0].0 >= w[1].0) || v.subdirs.windows(2).any(|w| w[0] >= w[1])
        {
            return None;
        }
        Some(DirRec {
            head: v.head,
            subdirs: v.subdirs.iter().map(|n| n.to_vec()).collect(),
            files,
        })
    }
}

/// A record read in place: its header and subdirectories parsed, its files
/// parsed as they are iterated (a rescan's check allocates nothing per file).
pub(crate) struct DirView<'b> {
    pub head: Head,
    pub subdirs: Vec<&'b [u8]>,
    files: &'b [u8],
}

/// A name a record may hold: one path component (see `Tree`).
fn valid_name(n: &[u8]) -> bool {
    crate::store::tree::name_problem(n).is_none()
}

impl<'b> DirView<'b> {
    pub fn parse(b: &'b [u8]) -> Option<DirView<'b>> {
        let mut r = Reader(b);
        if r.u8()? != VERSION {
            return None;
        }
        let flags = r.u8()?;
        let dir = if flags & F_DIR != 0 {
            Some(r.meta()?)
        } else {
            None
        };
        let mut ignore = [None; 2];
        for m in &mut ignore {
            let present = r.u8()? == 1;
            let meta = r.meta()?;
            *m = present.then_some(meta);
        }
        let root = if flags & F_ROOT != 0 {
            Some(RootInfo {
                tree: Digest::from_slice(r.take(32)?)?,
                files: r.u64()?,
                bytes: r.u64()?,
                generation: r.u64()?,
            })
        } else {
            None
        };
        let tree = if flags & F_TREE != 0 {
            Some((Digest::from_slice(r.take(32)?)?, r.u64()?, r.u64()?))
        } else {
            None
        };
        let n = u32::from_le_bytes(r.take(4)?.try_into().ok()?) as usize;
        let mut subdirs = Vec::with_capacity(n.min(4096));
        for _ in 0..n {
            let len = r.u16()?;
            let name = r.take(len)?;
            if !valid_name(name) {
                return None;
            }
            subdirs.push(name);
        }
        Some(DirView {
            head: Head {
                dir,
                dir_racy: flags & F_DIR_RACY != 0,
                complete: flags & F_COMPLETE != 0,
                ignore,
                root,
                tree,
            },
            subdirs,
            files: r.0,
        })
    }

    /// The files, in record order; a None item: the rest is damaged.
    pub fn files(&self) -> impl Iterator<Item = Option<(&'b [u8], FileRec)>> + 'b {
        let mut r = Reader(self.files);
        let mut broken = false;
        std::iter::from_fn(move || {
            if broken || r.0.is_empty() {
                return None;
            }
            let item = (|| {
                let len = r.u16()?;
                let name = r.take(len)?;
                let meta = r.meta()?;
                let racy = r.u8()? == 1;
                let generation = r.u64()?;
                let digest = Digest::from_slice(r.take(32)?)?;
                valid_name(name).then_some((
                    name,
                    FileRec {
                        meta,
                        racy,
                        generation,
                        digest,
                    },
                ))
            })();
            broken = item.is_none();
            Some(item)
        })
    }
}

/// The index key of a directory's record: root id ‖ path relative to the
/// root (empty for the root itself).
pub(crate) fn key(root_id: &[u8; 16], rel_dir: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(16 + rel_dir.len());
    k.extend_from_slice(root_id);
    k.extend_from_slice(rel_dir);
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: u64) -> FileRec {
        FileRec {
            meta: Meta {
                dev: i,
                ino: i + 1,
                size: i + 2,
                mtime_ns: -(i as i64),
                ctime_ns: i as i64 * 7,
                mode: 0o100644,
            },
            racy: i % 2 == 0,
            generation: i * 3,
            digest: Digest::of(&i.to_le_bytes()),
        }
    }

    #[test]
    fn records_round_trip_and_refuse_damage() {
        let mut d = DirRec {
            head: Head {
                dir: Some(rec(5).meta),
                dir_racy: true,
                complete: true,
                ignore: [None, Some(rec(6).meta)],
                root: Some(RootInfo {
                    tree: Digest::of(b"t"),
                    files: 3,
                    bytes: 99,
                    generation: 4,
                }),
                tree: Some((Digest::of(b"u"), 7, 8)),
            },
            subdirs: vec![b"x".to_vec(), vec![0xfe; 255]],
            files: vec![
                (b"a".to_vec(), rec(1)),
                (b"b".to_vec(), rec(3)),
                (vec![0xff; 255], rec(9)),
            ],
        };
        assert_eq!(d.get(b"b"), Some(&rec(3)));
        assert_eq!(d.get(b"c"), None);
        let b = d.encode();
        assert_eq!(DirRec::decode(&b), Some(d.clone()));
        // A cut inside the header or a file's fields is refused; one between
        // files reads as fewer files (hashed again): never as other data.
        for cut in 0..b.len() {
            if let Some(got) = DirRec::decode(&b[..cut]) {
                assert!(d.files.starts_with(&got.files), "cut at {cut}");
                assert_eq!((got.head, &got.subdirs), (d.head, &d.subdirs));
            }
        }
        let mut other = b.clone();
        other[0] = 1;
        assert_eq!(DirRec::decode(&other), None);
        d.files.swap(0, 1);
        assert_eq!(DirRec::decode(&d.encode()), None, "unsorted");
        let empty = DirRec::default();
        assert_eq!(DirRec::decode(&empty.encode()), Some(empty));
    }
}
