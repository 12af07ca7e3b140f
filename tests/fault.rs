//! The fault loop (issue 12): faults injected at random points, and after
//! each the store must heal with nothing stored lost. Two kinds:
//!
//! - **ENOSPC**: the store's filesystem (a small tmpfs) is filled to leave
//!   a random few MiB, then a run or a sync that may not fit. It works, or
//!   fails saying the filesystem is full; with the disk still full, then
//!   filled to the last byte, `stats`, `gc` and `fsck` work and find the
//!   store clean; with room again, the next run works.
//! - **A damaged sync record**: `syncs/NAME` truncated or overwritten at a
//!   random byte. `fsck` reports it (never exit 8), the next sync of that
//!   directory works, and fsck is clean after.
//!
//! After every fault, every output a run reported is read back whole
//! (`dagfs cat KEY/…`). `DAGFS_FAULTS` (default 6) faults of each kind from
//! `DAGFS_FAULT_SEED` (default: the time, printed); `scripts/fault-loop N`
//! runs more. Prints the figures: faults injected, recovered, lost.
//! Needs root (a tmpfs); skips, saying so, without.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

use common::{dagfs, fill, free_bytes, text};

struct Tmpfs {
    _dir: tempfile::TempDir,
    at: PathBuf,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().ok()?;
        let at = dir.path().to_path_buf();
        let o = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&at)
            .output()
            .ok()?;
        if !o.status.success() {
            eprintln!("SKIPPED: cannot mount a tmpfs (needs root): {}", text(&o));
            return None;
        }
        Some(Tmpfs { _dir: dir, at })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.at)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.at).status();
        }
    }
}

/// xorshift64*: the faults replay from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

struct Out {
    code: i32,
    out: String,
}

fn run(store: &Path, args: &[&str]) -> Out {
    let o = dagfs(store, args).output().expect("spawn dagfs");
    Out {
        code: o.status.code().expect("exited by a signal"),
        out: text(&o),
    }
}

/// What a run of version `v` writes: `big` (`size` bytes) and 100 small files.
fn big_bytes(v: u64, size: u64) -> Vec<u8> {
    format!("v{v}\n")
        .into_bytes()
        .into_iter()
        .cycle()
        .take(size as usize)
        .collect()
}

#[derive(Default, Debug)]
struct Figures {
    enospc: u64,
    sync_records: u64,
    recovered: u64,
    runs_stored: u64,
    runs_refused_full: u64,
    lost: u64,
}

#[test]
fn fault_loop_enospc_and_damaged_sync_records() {
    let n: u64 = std::env::var("DAGFS_FAULTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let seed: u64 = std::env::var("DAGFS_FAULT_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs()
        });
    eprintln!("fault-loop: {n} ENOSPC faults, {n} damaged sync records; seed {seed}");
    let Some(tmpfs) = Tmpfs::mount("24m") else {
        return;
    };
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let t = tempfile::tempdir().unwrap();
    let store = tmpfs.at.join("store");
    let filler = tmpfs.at.join("filler");
    let p = t.path().join("p");
    fs::create_dir(&p).unwrap();
    let file = p.join("dagfs.toml");
    let synced = t.path().join("synced");
    fs::create_dir(&synced).unwrap();
    // NB: the store exists, with its reserve, before the disk fills (a
    // store made on a full disk has none until there is room for it).
    let o = run(&store, &["stats"]);
    assert_eq!(o.code, 0, "{}", o.out);
    assert!(store.join("reserve").exists());
    let mut fig = Figures::default();
    // Outputs a run reported stored: (key prefix, version, size).
    let mut stored: Vec<(String, u64, u64)> = Vec::new();
    let check_all = |stored: &[(String, u64, u64)], fig: &mut Figures, when: &str| {
        for (key, v, size) in stored {
            let o = dagfs(&store, &["cat", &format!("{key}/big")])
                .output()
                .unwrap();
            if !o.status.success() || o.stdout != big_bytes(*v, *size) {
                fig.lost += 1;
                panic!("{when}: output {key} (v{v}) lost: {}", text(&o));
            }
        }
    };
    for round in 0..2 * n {
        let _ = fs::remove_file(&filler);
        if round % 2 == 0 {
            // ENOSPC at a random point of a run or a sync.
            fig.enospc += 1;
            // NB: a few versions over and over: the store stays within the
            // filesystem (no policy evicts), so a run that fits exists.
            let v = round % 8;
            let size = (1 + v % 2) << 20;
            fs::write(
                &file,
                format!(
                    "[tasks.big]\ncache = false\nrun = \"yes v{v} | head -c {size} > $DAGFS_OUT/big; \
                     for i in $(seq 1 100); do echo $i v{v} > $DAGFS_OUT/f$i; done\"\n"
                ),
            )
            .unwrap();
            for i in 0..50 {
                fs::write(synced.join(format!("s{i}")), format!("{} {i}\n", round % 8)).unwrap();
            }
            let leave = rng.below(4 << 20);
            fill(&filler, free_bytes(&tmpfs.at).saturating_sub(leave));
            let what = format!("round {round} (seed {seed}): {leave} bytes free");
            let o = if rng.below(3) == 0 {
                run(&store, &["sync", synced.to_str().unwrap(), "--name", "s"])
            } else {
                run(&store, &["run", "-f", file.to_str().unwrap()])
            };
            if o.code == 0 {
                if let Some(key) = o
                    .out
                    .lines()
                    .find(|l| l.starts_with("ran   big"))
                    .and_then(|l| l.split_whitespace().nth(3))
                {
                    fig.runs_stored += 1;
                    if !stored.iter().any(|(k, _, _)| k == key) {
                        stored.push((key.to_string(), v, size));
                    }
                }
            } else {
                assert!(
                    o.out.contains("the store's filesystem is full"),
                    "{what}: exit {} without saying the disk is full: {}",
                    o.code,
                    o.out
                );
                fig.runs_refused_full += 1;
            }
            for last_byte in [false, true] {
                if last_byte {
                    fill(&filler, u64::MAX);
                }
                for cmd in [&["stats"][..], &["gc"], &["fsck"], &["ls"]] {
                    let o = run(&store, cmd);
                    assert_eq!(o.code, 0, "{what}, full ({last_byte}): {cmd:?}: {}", o.out);
                }
                check_all(&stored, &mut fig, &what);
            }
            fs::remove_file(&filler).unwrap();
            let o = run(&store, &["run", "-f", file.to_str().unwrap()]);
            assert_eq!(o.code, 0, "{what}, with room again: {}", o.out);
            if let Some(key) = o
                .out
                .lines()
                .find(|l| l.starts_with("ran   big"))
                .and_then(|l| l.split_whitespace().nth(3))
            {
                if !stored.iter().any(|(k, _, _)| k == key) {
                    stored.push((key.to_string(), v, size));
                }
            }
        } else {
            // A damaged sync record.
            let o = run(&store, &["sync", synced.to_str().unwrap(), "--name", "s"]);
            assert_eq!(o.code, 0, "{}", o.out);
            fig.sync_records += 1;
            let rec = store.join("syncs/s");
            let mut bytes = fs::read(&rec).unwrap();
            let at = rng.below(bytes.len() as u64) as usize;
            if rng.below(2) == 0 {
                bytes.truncate(at);
            } else {
                bytes[at] = b"{}\"x0"[rng.below(5) as usize];
            }
            fs::write(&rec, &bytes).unwrap();
            let what = format!("round {round} (seed {seed}): sync record damaged at {at}");
            let o = run(&store, &["fsck"]);
            assert_ne!(o.code, 8, "{what}: fsck could not run: {}", o.out);
            fs::write(synced.join("s0"), format!("{round} changed\n")).unwrap();
            let o = run(&store, &["sync", synced.to_str().unwrap(), "--name", "s"]);
            assert_eq!(o.code, 0, "{what}: {}", o.out);
            let o = run(&store, &["fsck"]);
            assert_eq!(o.code, 0, "{what}: {}", o.out);
            check_all(&stored, &mut fig, &what);
        }
        fig.recovered += 1;
    }
    let o = run(&store, &["fsck"]);
    assert_eq!(o.code, 0, "{}", o.out);
    eprintln!(
        "fault-loop: faults injected {} ({} ENOSPC, {} damaged sync records); recovered {}; \
         runs stored {} / refused or failed on a full disk {}; outputs checked {}; lost {}",
        fig.enospc + fig.sync_records,
        fig.enospc,
        fig.sync_records,
        fig.recovered,
        fig.runs_stored,
        fig.runs_refused_full,
        stored.len(),
        fig.lost
    );
}
