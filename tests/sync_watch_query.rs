//! A one-shot `dagfs sync DIR` of a directory the daemon watches is
//! answered by the watch (as watchman answers `since`), after a fence that
//! makes sure every change made before the command is in the answer;
//! `--rescan`, or other filters, take a scan.
//!
//! Every mount is owned by a `Mounted` guard that unmounts on drop.

use std::fs;
use std::path::Path;

mod common;

use common::{dagfs, env, text, Mounted, Sandbox};

fn sync_json(store: &Path, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["sync"];
    all.extend_from_slice(args);
    all.push("--json");
    let o = dagfs(store, &all).output().unwrap();
    assert!(o.status.success(), "dagfs {all:?}: {}", text(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// Mount `e`'s store and have its daemon watch `src` as `name`.
fn mount_watching(e: &Sandbox, src: &Path, name: &str) -> Mounted {
    let m = Mounted::new(&e.store, &e.mnt);
    let o = dagfs(
        &e.store,
        &["sync", src.to_str().unwrap(), "--watch", "--name", name],
    )
    .output()
    .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    m
}

fn changed(r: &serde_json::Value, path: &str, kind: &str) -> bool {
    r["changes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["path"] == path && c["kind"] == kind)
}

/// The fence: a file written (with no pause at all) right before the
/// command is always in the snapshot the watch answers with, whether the
/// watch had taken it already or takes it for the query.
#[test]
fn a_one_shot_sync_of_a_watched_directory_is_answered_by_the_watch_and_misses_nothing() {
    let e = env();
    let src = e.root.join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("keep.txt"), "keep\n").unwrap();
    let m = mount_watching(&e, &src, "code");
    let s = src.to_str().unwrap();

    // Nothing changed: the current snapshot, no new one.
    let r = sync_json(&e.store, &[s, "--name", "code"]);
    assert_eq!(r["from_watch"], true, "{r}");
    assert_eq!(r["new_snapshot"], false, "{r}");
    assert_eq!(r["seq"], 1, "{r}");
    assert_eq!(r["changes"].as_array().unwrap().len(), 0, "{r}");

    let rounds = 25;
    for i in 0..rounds {
        let name = format!("f{i}.txt");
        let body = format!("round {i}\n");
        fs::write(src.join(&name), &body).unwrap();
        // An edit in place of a file the watch already knows, too.
        fs::write(src.join("keep.txt"), format!("keep {i}\n")).unwrap();
        let r = sync_json(&e.store, &[s, "--name", "code"]);
        assert_eq!(r["from_watch"], true, "round {i}: {r}");
        let seq = r["seq"].as_u64().unwrap();
        let snap = e.mnt.join(format!("syncs/code@{seq}"));
        assert_eq!(
            fs::read_to_string(snap.join(&name)).unwrap(),
            body,
            "round {i}: snapshot {seq} lacks the file written before the command: {r}"
        );
        assert_eq!(
            fs::read_to_string(snap.join("keep.txt")).unwrap(),
            format!("keep {i}\n"),
            "round {i}: snapshot {seq} has an old keep.txt: {r}"
        );
    }
    // A burst longer than one of the watch's batches (100 ms at most):
    // events still queued behind the query are in its answer too.
    let burst = src.join("burst");
    fs::create_dir(&burst).unwrap();
    for i in 0..4000 {
        fs::write(burst.join(format!("b{i}")), i.to_string()).unwrap();
    }
    let r = sync_json(&e.store, &[s, "--name", "code"]);
    assert_eq!(r["from_watch"], true, "{r}");
    assert_eq!(r["files"], 4000 + rounds + 1, "{}", r["files"]);
    let metrics = fs::read_to_string(e.mnt.join(".dagfs/metrics")).unwrap();
    let answers = format!("dagfs_sync_watch_answers {}", rounds + 2);
    assert!(metrics.contains(&answers), "{metrics}");

    // A watch of a filesystem other machines can write (here: FUSE, the
    // mount itself) would not answer; the synced directory is local.
    assert_eq!(dagfs::host::mounts::shared_fs(&e.mnt), Some("fuse"));
    assert_eq!(dagfs::host::mounts::shared_fs(&src), None);

    // The text report says where the answer came from.
    let o = dagfs(&e.store, &["sync", s, "--name", "code"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("answered by the daemon's watch") && text(&o).contains("no changes"),
        "{}",
        text(&o)
    );
    drop(m);
}

/// inotify does not see a write through a shared mmap: the watch's answer
/// misses it (as watchman's would), `--rescan` finds it from the file's
/// stat. Other filters than the watch's are a scan of their own.
#[test]
fn rescan_finds_what_inotify_cannot_see_and_other_filters_are_scanned() {
    use std::os::fd::AsRawFd;
    let e = env();
    let src = e.root.join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("mapped.bin"), b"0123456789abcdef").unwrap();
    fs::write(src.join("note.log"), "log\n").unwrap();
    let m = mount_watching(&e, &src, "code");
    let s = src.to_str().unwrap();

    // Map the file. The mapping holds the open file, so its close (an
    // event) comes only at the unmap, after the checks.
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(src.join("mapped.bin"))
        .unwrap();
    // SAFETY: a fresh shared mapping of a 16-byte file this test owns,
    // written within its length, unmapped once.
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            16,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        )
    };
    assert_ne!(map, libc::MAP_FAILED);
    drop(f);
    let r = sync_json(&e.store, &[s, "--name", "code"]);
    assert_eq!(r["from_watch"], true, "{r}");
    assert_eq!(r["changes"].as_array().unwrap().len(), 0, "{r}");
    // A stamp later than the snapshot's scan by more than its racy window.
    std::thread::sleep(std::time::Duration::from_millis(100));
    // SAFETY: within the 16 mapped bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(b"MAPPED".as_ptr(), map.cast::<u8>(), 6);
        assert_eq!(libc::msync(map, 16, libc::MS_SYNC), 0);
    }
    let unseen = sync_json(&e.store, &[s, "--name", "code"]);
    assert_eq!(unseen["from_watch"], true, "{unseen}");
    assert!(!changed(&unseen, "mapped.bin", "modified"), "{unseen}");

    let r = sync_json(&e.store, &[s, "--name", "code", "--rescan"]);
    assert_eq!(r["from_watch"], false, "{r}");
    assert!(changed(&r, "mapped.bin", "modified"), "{r}");
    let seq = r["seq"].as_u64().unwrap();
    assert_eq!(
        fs::read(e.mnt.join(format!("syncs/code@{seq}/mapped.bin"))).unwrap(),
        b"MAPPED6789abcdef"
    );
    // Regression (review): the watch's next answer took the rescan's
    // snapshot back, recording its own older tree again.
    let after = sync_json(&e.store, &[s, "--name", "code"]);
    assert_eq!(after["from_watch"], true, "{after}");
    assert!(!changed(&after, "mapped.bin", "modified"), "{after}");
    let seq = after["seq"].as_u64().unwrap();
    assert_eq!(
        fs::read(e.mnt.join(format!("syncs/code@{seq}/mapped.bin"))).unwrap(),
        b"MAPPED6789abcdef",
        "{after}"
    );
    // SAFETY: the mapping made above, unused from here on.
    assert_eq!(unsafe { libc::munmap(map, 16) }, 0);

    // Other filters: not what the watch keeps, so a scan.
    let r = sync_json(&e.store, &[s, "--name", "code", "--exclude", "*.log"]);
    assert_eq!(r["from_watch"], false, "{r}");
    assert!(changed(&r, "note.log", "removed"), "{r}");
    drop(m);
}

/// Regression (review): `notify` asked inotify for every open, so the
/// watch's own walk of a tree with more directories than inotify queues
/// events (16,384 by default) overflowed the queue, and every overflow
/// took a rescan that overflowed it again, forever: queries were never
/// answered and the daemon kept a core busy.
#[test]
fn a_tree_with_more_directories_than_inotify_queues_events_settles() {
    let queued: usize = fs::read_to_string("/proc/sys/fs/inotify/max_queued_events")
        .map_or(16_384, |s| s.trim().parse().unwrap_or(16_384));
    let e = env();
    let src = e.root.join("src");
    let (outer, inner) = (100, queued / 100 + 40);
    for i in 0..outer {
        for j in 0..inner {
            fs::create_dir_all(src.join(format!("d{i}/e{j}"))).unwrap();
        }
    }
    fs::write(src.join("d0/e0/a.txt"), "a\n").unwrap();
    let m = mount_watching(&e, &src, "big");
    let s = src.to_str().unwrap();
    for round in 0..3 {
        let deep = format!("d{}/e{}/n{round}.txt", outer - 1, inner - 1);
        fs::write(src.join(&deep), "new\n").unwrap();
        let r = sync_json(&e.store, &[s, "--name", "big"]);
        assert_eq!(r["from_watch"], true, "round {round}: {}", r["files"]);
        assert_eq!(r["files"], round + 2, "round {round}");
        let seq = r["seq"].as_u64().unwrap();
        assert_eq!(
            fs::read_to_string(e.mnt.join(format!("syncs/big@{seq}/{deep}"))).unwrap(),
            "new\n"
        );
    }
    drop(m);
}
