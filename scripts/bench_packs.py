#!/usr/bin/env python3
"""Store growth: a store that many syncs each added a pack to, against a store
holding the same blobs from one sync; run it through scripts/bench-packs.

  grown   ROUNDS syncs of one directory, each after adding FILES new small
          files (enough for a pack of their own: MIN_PACK = 64)
  single  one sync of the final directory: the same blobs, one pack

Timed, alternated run by run (medians, and the median of the pair ratios
grown/single; goal <= 1.2x):

  open+lookup  `dagfs cat NAME@latest/<a file of the first round>`: opens the
               store, finds the blob in a pack, prints it
  cached run   a pipeline whose one task has the synced directory as input,
               run once untimed, then timed: a hit, after the input's blobs
               are looked up

Also prints how many packs each store holds. Before packs were merged past
a limit (issue 17), a grown store held one pack per sync.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time


def run(argv, **kw):
    p = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)
    if p.returncode != 0:
        sys.exit(f"bench-packs: {' '.join(argv)} exited {p.returncode}: {p.stderr.decode(errors='replace')}")
    return p


def timed(argv, **kw):
    t = time.monotonic()
    run(argv, **kw)
    return time.monotonic() - t


def packs(store):
    d = os.path.join(store, "packs")
    return len([f for f in os.listdir(d) if f.endswith(".idx")]) if os.path.isdir(d) else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dagfs", required=True)
    ap.add_argument("--rounds", type=int, default=1000)
    ap.add_argument("--files", type=int, default=64, help="new files per round (64)")
    ap.add_argument("--reps", type=int, default=11)
    a = ap.parse_args()
    env = dict(os.environ)
    env.pop("DAGFS_STORE", None)
    work = tempfile.mkdtemp(prefix="dagfs-bench-packs-")
    try:
        src = os.path.join(work, "data")
        os.mkdir(src)
        grown, single = os.path.join(work, "grown"), os.path.join(work, "single")
        t = time.monotonic()
        for r in range(a.rounds):
            d = os.path.join(src, f"r{r:05d}")
            os.mkdir(d)
            for i in range(a.files):
                with open(os.path.join(d, f"f{i}"), "w") as f:
                    f.write(f"round {r} file {i}\n" * (1 + i % 5))
            run([a.dagfs, "--store", grown, "sync", src, "--name", "data"], env=env)
            if r % 100 == 99:
                print(f"  {r + 1} syncs, {packs(grown)} packs, {time.monotonic() - t:.0f} s", flush=True)
        run([a.dagfs, "--store", single, "sync", src, "--name", "data"], env=env)
        with open(os.path.join(work, "dagfs.toml"), "w") as f:
            f.write('name = "packs"\n[tasks.count]\nrun = "ls -R data | wc -l > $DAGFS_OUT/n"\ninputs = ["data/"]\nhermetic = "off"\n')
        rows = []
        for what, argv in [
            ("open+lookup (cat)", ["cat", "data@latest/r00000/f3"]),
            ("cached run", ["run", "-f", os.path.join(work, "dagfs.toml")]),
        ]:
            for s in (grown, single):
                run([a.dagfs, "--store", s] + argv, env=env, cwd=work)
            tg, ts, pairs = [], [], []
            for _ in range(a.reps):
                g = timed([a.dagfs, "--store", grown] + argv, env=env, cwd=work)
                s_ = timed([a.dagfs, "--store", single] + argv, env=env, cwd=work)
                tg.append(g)
                ts.append(s_)
                pairs.append(g / s_)
            rows.append((what, statistics.median(tg), statistics.median(ts), statistics.median(pairs)))
        print(f"\n{a.rounds} syncs of {a.files} new files each; grown store: {packs(grown)} packs, single: {packs(single)}; "
              f"{a.reps} runs each, alternated\n")
        print("| measure | grown | single | grown / single (median of pairs) |")
        print("|---|---|---|---|")
        for what, g, s_, r in rows:
            print(f"| {what} | {g * 1000:.1f} ms | {s_ * 1000:.1f} ms | {r:.2f}x (goal <= 1.2x) |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
