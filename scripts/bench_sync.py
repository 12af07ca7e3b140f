#!/usr/bin/env python3
"""Host-directory sync benchmark for dagfs; run it through scripts/bench-sync.

Generates TREE under WORKDIR: 100,000 files (--files) of 1-1024 random bytes
(unique contents), 100 per directory, in 1,000 directories under 100
(d000/e0 .. d099/e9). The store is WORKDIR/store, on the same filesystem.
Everything runs with a warm page cache (TREE was just written, and each
baseline reads it before it is timed), after a sync(2) that waits for the
set-up's writes to reach the disk.

  initial snapshot   `dagfs sync TREE` into the empty store (1 run: it is
                     the first one by definition) vs
                     `find TREE -type f -print0 | xargs -0 b3sum >/dev/null`
                     (median of --runs, after one untimed run)
  rescan, no change  `dagfs sync TREE` again vs `git status --porcelain`
                     (median of --runs each, after one untimed run). The
                     git repository has its own git dir (WORKDIR/tree.git,
                     work tree TREE), every file committed,
                     core.untrackedCache=true, and one untimed `git status`
                     before timing.
  rescan, one file   before each run, one file gets new bytes (another
  changed            file each run, same size); then `dagfs sync TREE`, then
                     `git status --porcelain`, then `rsync -an TREE/ COPY/`
                     (COPY: an rsync copy of TREE made up front), each timed
                     (median of --runs).
  watched change     `dagfs sync TREE --watch --json` running on the same
                     store; N times (--writes, 100): write new bytes to a
                     file (open, write, close) and time until the watch
                     prints the snapshot whose change set names that file.
                     A line is printed only after the snapshot is committed
                     and recorded in the sync log (durably). Median, p90, max.
                     Taken after a sync(2), so that the rows before (whose
                     syncs rewrite the stat cache's copy, megabytes) leave no
                     dirty data: with at most 2 MiB of it on the system, a
                     pass makes its blobs durable with syncfs(2).
  watched change,    the same, with 50 MB of another file's data left dirty
  50 MB dirty        (written, not synced, just before; removed after), so
                     that a pass fsyncs its files and directories one by one.
  watched rescan     the store mounted (`dagfs mount`), its daemon watching
                     TREE (`dagfs sync TREE --watch`); `dagfs sync TREE`
                     (answered by the watch: `from_watch`) vs `git status
                     --porcelain`, with no change and with one file changed
                     right before (median of --runs). watchman 4.9's `since`
                     query took 0.04x `git status` on this machine kind
                     (issue 17); watchman itself is not installed here.

`ratio` is dagfs time / baseline time: lower is better.
"""

import argparse
import os
import random
import select
import statistics
import subprocess
import sys
import time
import json


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def timed(cmd, **kw):
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, **kw)
    return time.perf_counter() - t


def median_of(runs, fn):
    return statistics.median(fn() for _ in range(runs))


def fmt_s(s):
    if s < 1:
        return f"{s * 1000:.0f} ms"
    return f"{s:.2f} s"


def generate(tree, files):
    rnd = random.Random(42)
    per_dir = 100
    n = 0
    for d in range(100):
        for e in range(10):
            sub = os.path.join(tree, f"d{d:03}", f"e{e}")
            os.makedirs(sub, exist_ok=True)
            for f in range(per_dir):
                if n >= files:
                    return
                with open(os.path.join(sub, f"f{f:02}"), "wb") as fh:
                    fh.write(rnd.randbytes(rnd.randint(1, 1024)))
                n += 1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dagfs", required=True)
    ap.add_argument("--b3sum", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--writes", type=int, default=100)
    a = ap.parse_args()
    if a.files > 100_000:
        sys.exit("--files: at most 100,000")

    w = a.workdir
    tree, store, copy = (os.path.join(w, x) for x in ("tree", "store", "copy"))
    gitdir = os.path.join(w, "tree.git")
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    log(f"generating {a.files:,} files in {tree}")
    generate(tree, a.files)
    log("git repository (every file committed) and an rsync copy")
    git = ["git", f"--git-dir={gitdir}", f"--work-tree={tree}"]
    env = dict(os.environ, GIT_AUTHOR_NAME="b", GIT_AUTHOR_EMAIL="b@b",
               GIT_COMMITTER_NAME="b", GIT_COMMITTER_EMAIL="b@b")
    subprocess.run(["git", "init", "-q", "--bare", gitdir], check=True)
    subprocess.run(git + ["config", "core.bare", "false"], check=True)
    subprocess.run(git + ["config", "core.untrackedCache", "true"], check=True)
    # NB: no background gc racing the clean-up (100,000 loose objects).
    subprocess.run(git + ["config", "gc.auto", "0"], check=True)
    subprocess.run(git + ["add", "-A"], check=True, env=env)
    subprocess.run(git + ["commit", "-q", "-m", "tree"], check=True, env=env)
    subprocess.run(["rsync", "-a", tree + "/", copy + "/"], check=True)

    # NB: the set-up just wrote ~300,000 files (tree, git objects, copy);
    # measure in a steady state, not while the kernel writes them back
    # (that would land on whichever timed command flushes anything).
    log("sync: waiting for the set-up's writes to reach the disk")
    os.sync()
    time.sleep(2)

    dagfs = [a.dagfs, "--store", store]
    rows = []

    log("initial snapshot vs b3sum")
    b3 = ["bash", "-c", f'find "$1" -type f -print0 | xargs -0 "$2" >/dev/null', "-",
          tree, a.b3sum]
    timed(b3)
    b3_s = median_of(a.runs, lambda: timed(b3))
    init_s = timed(dagfs + ["sync", tree, "--json"])
    rows.append(("initial snapshot", init_s, "find | xargs b3sum", b3_s,
                 "<= 1.0x (1.2x loaded)"))

    log("rescan, no change vs git status")
    gst = git + ["status", "--porcelain"]
    timed(gst)
    timed(dagfs + ["sync", tree])
    rescan_s = median_of(a.runs, lambda: timed(dagfs + ["sync", tree, "--json"]))
    git_s = median_of(a.runs, lambda: timed(gst))
    rows.append(("rescan, no change", rescan_s, "git status", git_s, "<= 0.8x"))

    log("rescan, one file changed vs git status and rsync -an")
    rnd = random.Random(7)
    one = {"dagfs": [], "git": [], "rsync": []}
    for i in range(a.runs):
        p = os.path.join(tree, f"d{rnd.randrange(100):03}", f"e{rnd.randrange(10)}",
                         f"f{rnd.randrange(100):02}")
        size = os.path.getsize(p)
        with open(p, "wb") as fh:
            fh.write(rnd.randbytes(size))
        one["dagfs"].append(timed(dagfs + ["sync", tree, "--json"]))
        one["git"].append(timed(gst))
        one["rsync"].append(timed(["rsync", "-an", tree + "/", copy + "/"]))
    d1 = statistics.median(one["dagfs"])
    rows.append(("rescan, one file changed", d1, "git status",
                 statistics.median(one["git"]), ""))
    rows.append(("", d1, "rsync -an", statistics.median(one["rsync"]), ""))

    log(f"watch: {a.writes} writes")
    os.sync()
    time.sleep(1)
    lat = watch_latency(dagfs, tree, a.writes, seed=9)
    log(f"watch: {a.writes} writes, 50 MB of another file dirty")
    dirty = os.path.join(w, "dirty.bin")
    with open(dirty, "wb") as fh:
        fh.write(os.urandom(50 << 20))
    try:
        lat_dirty = watch_latency(dagfs, tree, a.writes, seed=10)
    finally:
        os.unlink(dirty)

    log("rescan answered by a daemon's watch vs git status")
    rows.extend(daemon_watching(dagfs, tree, os.path.join(w, "mnt"), gst, a.runs, rnd))
    load1 = os.getloadavg()

    print()
    print(f"dagfs sync bench: {a.files:,} files, {os.cpu_count()} cpus, "
          f"load average {load0[0]:.2f} at start, {load1[0]:.2f} at end; "
          f"warm page cache")
    hdr = f"{'operation':<26} {'dagfs':>9}   {'baseline':<20} {'time':>9} {'ratio':>7}  goal"
    print(hdr)
    print("-" * len(hdr))
    for name, mine, base, base_s, goal in rows:
        print(f"{name:<26} {fmt_s(mine):>9}   {base:<20} {fmt_s(base_s):>9} "
              f"{mine / base_s:>6.2f}x  {goal}")
    for name, xs in (("watched change, median", lat),
                     ("  50 MB dirty, median", lat_dirty)):
        lat_ms = sorted(x * 1000 for x in xs)
        p90 = lat_ms[int(len(lat_ms) * 0.9) - 1]
        print(f"{name:<26} {statistics.median(lat_ms):>6.1f} ms"
              f"   (of {len(lat_ms)}; p90 {p90:.1f} ms, max {lat_ms[-1]:.1f} ms)"
              f"{'':>4} goal <= 2 ms")
    log(f"total {time.perf_counter() - t0:.0f} s")


def daemon_watching(dagfs, tree, mnt, gst, runs, rnd):
    """Rows: `dagfs sync TREE` answered by a mounted daemon's watch of TREE
    (no change; one file changed just before), against `git status`."""
    os.makedirs(mnt)
    subprocess.run(dagfs + ["mount", mnt], check=True, stdout=subprocess.DEVNULL)
    try:
        subprocess.run(dagfs + ["sync", tree, "--watch"], check=True,
                       stdout=subprocess.DEVNULL)

        def answered():
            start = time.perf_counter()
            r = subprocess.run(dagfs + ["sync", tree, "--json"], check=True,
                               stdout=subprocess.PIPE)
            wall = time.perf_counter() - start
            if not json.loads(r.stdout)["from_watch"]:
                raise SystemExit("bench-sync: the daemon's watch did not answer")
            return wall

        answered()
        timed(gst)
        none_s = median_of(runs, answered)
        git_s = median_of(runs, lambda: timed(gst))
        one = {"dagfs": [], "git": []}
        for i in range(runs):
            p = os.path.join(tree, f"d{rnd.randrange(100):03}", f"e{rnd.randrange(10)}",
                             f"f{rnd.randrange(100):02}")
            size = os.path.getsize(p)
            with open(p, "wb") as fh:
                fh.write(rnd.randbytes(size))
            one["dagfs"].append(answered())
            one["git"].append(timed(gst))
        return [("watched rescan, no change", none_s, "git status", git_s,
                 "watchman since: 0.04x"),
                ("watched rescan, one file", statistics.median(one["dagfs"]), "git status",
                 statistics.median(one["git"]), "")]
    finally:
        subprocess.run(dagfs + ["umount", mnt], stdout=subprocess.DEVNULL)


def watch_latency(dagfs, tree, writes, seed):
    """Latencies of `writes` writes (contents from `seed`: another seed for
    another run, or a write could leave a file as it was)."""
    proc = subprocess.Popen(dagfs + ["sync", tree, "--watch", "--json"],
                            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    buf = b""

    def next_line(deadline):
        nonlocal buf
        while b"\n" not in buf:
            left = deadline - time.perf_counter()
            if left <= 0:
                raise SystemExit("the watch printed nothing in time")
            r, _, _ = select.select([proc.stdout], [], [], left)
            if r:
                chunk = os.read(proc.stdout.fileno(), 1 << 20)
                if not chunk:
                    raise SystemExit("the watch exited")
                buf += chunk
        line, buf = buf.split(b"\n", 1)
        return json.loads(line)

    try:
        next_line(time.perf_counter() + 120)
        rnd = random.Random(seed)
        out = []
        for i in range(writes):
            rel = f"d{rnd.randrange(100):03}/e{rnd.randrange(10)}/f{rnd.randrange(100):02}"
            data = f"write {seed} {i} ".encode() + rnd.randbytes(16)
            t = time.perf_counter()
            with open(os.path.join(tree, rel), "wb") as fh:
                fh.write(data)
            while True:
                v = next_line(t + 30)
                if any(c["path"] == rel for c in v["changes"]):
                    break
            out.append(time.perf_counter() - t)
        return out
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    main()
