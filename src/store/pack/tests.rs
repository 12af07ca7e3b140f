//! Tests of packs: opening at first need, reads through a set a merge
//! replaced, damaged indexes, and failures that may pass.
//!
//! May call: `store`, `hash`.

use super::*;

fn write(dir: &Path, blobs: &[&[u8]]) -> FinishedPack {
    let mut w = PackWriter::create(dir.join("p.pack")).unwrap();
    for b in blobs {
        w.add(Digest::of(b), b).unwrap();
    }
    w.finish().unwrap()
}

fn publish(dir: &Path, f: &FinishedPack) {
    fs::rename(&f.pack, dir.join(format!("{}.pack", f.id))).unwrap();
    fs::rename(&f.idx, dir.join(format!("{}.idx", f.id))).unwrap();
}

/// Remove pack `id`'s two files from `dir` (as a merge does).
fn unpublish(dir: &Path, id: &str) {
    for ext in ["pack", "idx"] {
        fs::remove_file(dir.join(format!("{id}.{ext}"))).unwrap();
    }
}

/// A pack of `blobs`, written and published in `dir`.
fn published(dir: &Path, blobs: &[&[u8]]) -> FinishedPack {
    let f = write(dir, blobs);
    publish(dir, &f);
    f
}

/// A pack is opened at its first read, so a lookup that finds its blob
/// in another pack never opens it; one whose `.pack` is missing or not
/// a pack reads as holding nothing and is left out of what trusts rows.
#[test]
fn a_pack_file_is_opened_at_first_need_and_a_bad_one_holds_nothing() {
    let t = tempfile::tempdir().unwrap();
    let (a, b, c): (&[u8], &[u8], &[u8]) = (b"in a", b"in b", b"in c");
    let fa = published(t.path(), &[a]);
    let fb = published(t.path(), &[b]);
    let fc = published(t.path(), &[c]);
    fs::remove_file(t.path().join(format!("{}.pack", fb.id))).unwrap();
    fs::write(
        t.path().join(format!("{}.pack", fc.id)),
        b"not a pack at all",
    )
    .unwrap();
    let packs = Packs::new(t.path().to_path_buf());
    assert_eq!(packs.all().len(), 3, "indexes open without their packs");
    assert_eq!(packs.read(&Digest::of(a)).unwrap().as_deref(), Some(a));
    let opened = packs
        .all()
        .iter()
        .filter(|p| p.data.get().is_some())
        .count();
    assert!(opened <= 1, "{opened} packs opened for one read");
    assert_eq!(packs.read(&Digest::of(b)).unwrap(), None);
    assert_eq!(packs.read(&Digest::of(c)).unwrap(), None);
    let ids: Vec<String> = packs
        .checked()
        .unwrap()
        .iter()
        .map(|p| p.id.clone())
        .collect();
    assert_eq!(ids, vec![fa.id.clone()]);
    assert!(Pack::load(t.path(), &fb.id).is_err());
    assert_eq!(
        Pack::load(t.path(), &fc.id).unwrap_err().reason,
        "not a pack"
    );
}

/// Put a self-symlink where `path` was (the file moved to `aside`):
/// opening it fails with ELOOP, which says nothing of the pack, as no
/// descriptor left or an I/O error would not.
fn fail_to_open(path: &Path, aside: &Path) {
    fs::rename(path, aside).unwrap();
    std::os::unix::fs::symlink(path, path).unwrap();
}

fn restore(path: &Path, aside: &Path) {
    fs::remove_file(path).unwrap();
    fs::rename(aside, path).unwrap();
}

/// A pack that could not be opened for a reason that may pass read as
/// holding nothing, so what acts on "not stored" (gc's mark, a lookup's
/// eviction, a sync's quarantine, fsck's repair) acted on it. Now it
/// is an error, unless another pack yields the blob, and it is kept no
/// longer than it lasts.
#[test]
fn a_pack_that_fails_to_open_is_an_error_not_absent() {
    let t = tempfile::tempdir().unwrap();
    let (x, y): (&[u8], &[u8]) = (b"in the pack that fails", b"in another pack");
    let f = published(t.path(), &[x]);
    published(t.path(), &[y]);
    let (dx, dy) = (Digest::of(x), Digest::of(y));
    let aside = t.path().join("aside");
    for ext in ["pack", "idx"] {
        let path = t.path().join(format!("{}.{ext}", f.id));
        fail_to_open(&path, &aside);
        let packs = Packs::new(t.path().to_path_buf());
        assert!(packs.read(&dx).is_err(), "{ext}: read");
        assert!(packs.find_checked(&dx).is_err(), "{ext}: find_checked");
        assert!(packs.checked().is_err(), "{ext}: checked");
        // A blob in no index: an index that opened answers for its
        // pack without it; one that did not leaves no answer.
        let absent = packs.read(&Digest::of(b"in no pack"));
        match ext {
            "pack" => assert_eq!(absent.unwrap(), None),
            _ => assert!(absent.is_err(), "{ext}: a blob in no pack"),
        }
        assert_eq!(packs.read(&dy).unwrap().as_deref(), Some(y), "{ext}");
        assert!(packs.find_checked(&dy).unwrap().is_some(), "{ext}");
        restore(&path, &aside);
        assert_eq!(packs.read(&dx).unwrap().as_deref(), Some(x), "{ext}");
        assert!(packs.find_checked(&dx).unwrap().is_some(), "{ext}");
        assert_eq!(packs.checked().unwrap().len(), 2, "{ext}");
    }
    // A `.pack` that is gone is a verdict, not an error: it holds
    // nothing (a merge removed it).
    fs::remove_file(t.path().join(format!("{}.pack", f.id))).unwrap();
    let packs = Packs::new(t.path().to_path_buf());
    assert_eq!(packs.read(&dx).unwrap(), None);
    assert!(packs.find_checked(&dx).unwrap().is_none());
    assert_eq!(packs.checked().unwrap().len(), 1);
}

/// What is not a regular file where a pack's files should be is not a
/// pack, a verdict: a FIFO does not block the open, a directory is no
/// index.
#[test]
fn a_fifo_or_directory_in_a_packs_place_is_not_a_pack() {
    let t = tempfile::tempdir().unwrap();
    let (x, y): (&[u8], &[u8]) = (b"behind a fifo", b"behind a directory");
    let fx = published(t.path(), &[x]);
    let fy = published(t.path(), &[y]);
    let pack = t.path().join(format!("{}.pack", fx.id));
    fs::remove_file(&pack).unwrap();
    let c = std::ffi::CString::new(pack.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    let idx = t.path().join(format!("{}.idx", fy.id));
    fs::remove_file(&idx).unwrap();
    fs::create_dir(&idx).unwrap();
    let packs = Packs::new(t.path().to_path_buf());
    assert_eq!(packs.read(&Digest::of(x)).unwrap(), None);
    assert_eq!(packs.read(&Digest::of(y)).unwrap(), None);
    assert!(packs.checked().unwrap().is_empty());
    assert_eq!(
        Pack::load(t.path(), &fx.id).unwrap_err().reason,
        "not a pack"
    );
    assert_eq!(
        Pack::open(t.path(), &fy.id).unwrap_err().reason,
        "not a pack index"
    );
}

/// A reader whose set of packs predates a merge finds the blob in the
/// merged pack even though the pack its set names was removed before
/// it was ever opened.
#[test]
fn a_read_from_a_set_a_merge_replaced_finds_the_merged_pack() {
    let t = tempfile::tempdir().unwrap();
    let x: &[u8] = b"merged away";
    let old = published(t.path(), &[x]);
    let packs = Packs::new(t.path().to_path_buf());
    let before = packs.all();
    let merged = published(t.path(), &[x, b"and another"]);
    let m = Arc::new(Pack::load(t.path(), &merged.id).unwrap());
    packs.update(|l| l.push(m));
    unpublish(t.path(), &old.id);
    packs.update(|l| l.retain(|p| p.id != old.id));
    assert_eq!(
        packs.read_from(before, &Digest::of(x)).unwrap().as_deref(),
        Some(x)
    );
}

/// A read-only store's packs are opened when listed: a pack its owner
/// removes afterwards (a merge) stays readable there.
#[test]
fn an_eager_set_reads_a_pack_removed_after_it_was_listed() {
    let t = tempfile::tempdir().unwrap();
    let x: &[u8] = b"read by another process";
    let f = published(t.path(), &[x]);
    let eager = Packs::new_eager(t.path().to_path_buf());
    let lazy = Packs::new(t.path().to_path_buf());
    assert_eq!((eager.all().len(), lazy.all().len()), (1, 1));
    unpublish(t.path(), &f.id);
    assert_eq!(eager.read(&Digest::of(x)).unwrap().as_deref(), Some(x));
    assert_eq!(lazy.read(&Digest::of(x)).unwrap(), None);
}

/// A task's few small blobs never make a file: a commit writes them
/// loose, so the file would be made and deleted for nothing.
#[test]
fn a_small_pack_stays_in_memory_until_finished() {
    let t = tempfile::tempdir().unwrap();
    let path = t.path().join("p.pack");
    let blobs: [&[u8]; 3] = [b"tree", b"", b"short file\n"];
    let mut w = PackWriter::create(path.clone()).unwrap();
    for b in blobs {
        w.add(Digest::of(b), b).unwrap();
    }
    assert!(!path.exists() && !w.on_disk(), "a file for three records");
    let back = w.into_blobs().unwrap();
    let want: Vec<(Digest, Vec<u8>)> = blobs.iter().map(|b| (Digest::of(b), b.to_vec())).collect();
    assert_eq!(back, want);
    // Finished, the same records make a pack that reads back.
    let f = write(t.path(), &blobs);
    publish(t.path(), &f);
    let p = Pack::load(t.path(), &f.id).unwrap();
    for b in blobs {
        assert_eq!(
            p.read(&Digest::of(b), t.path()).unwrap().as_deref(),
            Some(b)
        );
    }
}

#[test]
fn packed_blobs_read_back_and_are_checked() {
    let t = tempfile::tempdir().unwrap();
    let blobs: Vec<Vec<u8>> = (0..300u32)
        .map(|i| i.to_le_bytes().repeat(i as usize % 50))
        .collect();
    let refs: Vec<&[u8]> = blobs.iter().map(|b| b.as_slice()).collect();
    let f = write(t.path(), &refs);
    publish(t.path(), &f);
    let p = Pack::load(t.path(), &f.id).unwrap();
    // The empty blob appears once (i % 50 == 0 repeats it).
    assert_eq!(p.count(), 295);
    for b in &blobs {
        assert_eq!(
            p.read(&Digest::of(b), t.path()).unwrap().as_deref(),
            Some(&b[..])
        );
    }
    assert!(p.read(&Digest::of(b"absent"), t.path()).unwrap().is_none());
    let d = Digest::of(&blobs[7]);
    let hex = d.to_hex();
    assert!(p.with_prefix(&hex[..5]).any(|x| x == d));
    assert!(p
        .with_prefix(&hex[..8])
        .all(|x| x.to_hex().starts_with(&hex[..8])));

    // One flipped byte in a blob: that read fails, the others do not.
    let (off, _) = p.find(&d).unwrap().unwrap();
    let path = p.pack_path(t.path());
    let mut bytes = fs::read(&path).unwrap();
    bytes[off as usize] ^= 1;
    fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    fs::write(&path, &bytes).unwrap();
    let p = Pack::load(t.path(), &f.id).unwrap();
    assert!(matches!(
        p.read(&d, t.path()),
        Err(StoreError::Corrupt { .. })
    ));
    assert!(p.read(&Digest::of(&blobs[8]), t.path()).unwrap().is_some());
}

/// An index opened without its whole check (`Pack::open`, what every
/// lookup uses) never yields other bytes than a blob's, nor an error
/// for a blob the pack holds whole: each byte of the index flipped in
/// turn, every blob reads back right or is not found. A damaged index
/// is left out of `Packs::checked` (gc, repacks, fsck).
#[test]
fn an_unchecked_damaged_index_never_yields_wrong_bytes() {
    let t = tempfile::tempdir().unwrap();
    let blobs: Vec<Vec<u8>> = (0..40u32)
        .map(|i| i.to_le_bytes().repeat(1 + i as usize))
        .collect();
    let refs: Vec<&[u8]> = blobs.iter().map(|b| b.as_slice()).collect();
    let f = write(t.path(), &refs);
    publish(t.path(), &f);
    let idx = t.path().join(format!("{}.idx", f.id));
    let good = fs::read(&idx).unwrap();
    fs::set_permissions(&idx, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let (mut opened, mut missed) = (0, 0);
    for i in 0..good.len() {
        let mut b = good.clone();
        b[i] ^= 0x40;
        fs::write(&idx, &b).unwrap();
        let Ok(p) = Pack::open(t.path(), &f.id) else {
            continue;
        };
        opened += 1;
        for want in &blobs {
            match p.read(&Digest::of(want), t.path()) {
                Ok(Some(got)) => assert_eq!(&got, want, "byte {i} flipped"),
                Ok(None) => missed += 1,
                Err(e) => panic!("byte {i} flipped: {e}"),
            }
        }
        assert!(
            p.check().is_err(),
            "byte {i} flipped, and the whole check passed"
        );
        let packs = Packs::new(t.path().to_path_buf());
        assert_eq!(packs.all().len(), 1);
        assert!(packs.checked().unwrap().is_empty(), "byte {i} flipped");
        // Nor is a blob of it stored, for what would not store it
        // again (`Store::has_blob`).
        for want in &blobs {
            assert!(
                packs.find_checked(&Digest::of(want)).unwrap().is_none(),
                "byte {i} flipped"
            );
        }
    }
    assert!(
        opened > good.len() / 2 && missed > 0,
        "{opened} opened, {missed} missed"
    );
    fs::write(&idx, &good).unwrap();
    let p = Pack::open(t.path(), &f.id).unwrap();
    assert!(p.check().is_ok());
}

#[test]
fn a_damaged_index_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let f = write(t.path(), &[b"a", b"b", b"c"]);
    publish(t.path(), &f);
    let idx = t.path().join(format!("{}.idx", f.id));
    let good = fs::read(&idx).unwrap();
    fs::set_permissions(&idx, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    for i in 0..good.len() {
        let mut b = good.clone();
        b[i] ^= 0x40;
        fs::write(&idx, &b).unwrap();
        assert!(Pack::load(t.path(), &f.id).is_err(), "byte {i} flipped");
    }
    for n in 0..good.len() {
        fs::write(&idx, &good[..n]).unwrap();
        assert!(Pack::load(t.path(), &f.id).is_err(), "cut at {n}");
    }
    fs::write(&idx, &good).unwrap();
    assert!(Pack::load(t.path(), &f.id).is_ok());
}
