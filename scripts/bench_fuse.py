#!/usr/bin/env python3
"""FUSE mount benchmark for dagfs; run it through scripts/bench-fuse.

Builds two outputs with a real pipeline in a fresh store under WORKDIR:

  big    one file of 1 GiB from /dev/urandom (--quick: 64 MiB)
  tree   100,000 files of 0-2047 random bytes (--quick: 10,000), 100 per
         directory, in 1,000 directories under 100 (d000/e0 .. d099/e9)

The tree's task also copies what it wrote to WORKDIR/native/tree: the native
side is the same bytes on the host filesystem (the one the store is on).
The large file's native side is its blob file in the store: the same blocks
on disk, so a cold read compares the read paths and not two layouts. Then,
for each --config (mount options, default: the daemon's defaults), it mounts
the store with `dagfs mount` and times each operation on the native copy and
through the mount, alternating:

  read 1 GiB cold   cat FILE >/dev/null after `sync; echo 3 >drop_caches`
  read 1 GiB warm   the same, the file in the page cache
  read 1 GiB cold,  dd bs=1M (cat reads 128 KiB at a time)
    1 MiB reads
  find              find DIR >/dev/null
  ls -lR            ls -lR DIR >/dev/null
  du -s             du -s DIR >/dev/null
  tar               tar cf - -C DIR . | cat >/dev/null (GNU tar skips reading
                    file contents when it writes to /dev/null itself)
  cat all           find DIR -type f -print0 | xargs -0 cat >/dev/null
  ls -lR, cat all   also cold (first touch): after dropping caches (1 run;
  (cold)            no goal)

Warm figures are the median of --runs (3) timed runs, each right after an
untimed pass (the warm 1 GiB read: of 5). Cold ones the median of --runs (1
in --quick). Native and mount runs alternate.
`reqs` is the FUSE requests the daemon served per timed run (from
/.dagfs/stats, less those of reading it: give or take a few), which tells
what reached the daemon at all. `ratio` is mount
time / native time: lower is better; the read goal "speed >= 0.95x native"
is a time ratio <= 1.053.

Daemon memory: VmHWM of the daemon (/proc/PID/status) after all of the above
(the whole tree walked, every file read), and, in a second store whose index
holds 1,000,000 entries (--quick: 100,000; made by `examples/bench_entries`,
which copies one real entry's index record under synthetic keys: see that
file), VmHWM after `ls MNT/keys | wc -l`. That store is built once and reused
by every config.

Needs root (drop_caches, mounting) and /dev/fuse. Everything lives under
WORKDIR, which the wrapper removes; mounts are unmounted on the way out.
"""

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

MIB = 1 << 20


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def sh(cmd, check=True, **kw):
    return subprocess.run(["bash", "-c", cmd], check=check, **kw)


def timed(cmd):
    """Wall seconds of one `bash -c cmd` (stdout/stderr discarded)."""
    start = time.perf_counter()
    r = subprocess.run(["bash", "-o", "pipefail", "-c", cmd],
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.perf_counter() - start
    if r.returncode != 0:
        raise RuntimeError(f"`{cmd}` failed ({r.returncode}): {r.stderr.decode()[-500:]}")
    return wall


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


GEN_TREE = r'''
import os, random, sys
out, n = sys.argv[1], int(sys.argv[2])
rnd = random.Random(42)
for i in range(n):
    leaf = i // 100
    d = os.path.join(out, "d%03d" % (leaf // 10), "e%d" % (leaf % 10))
    if i % 100 == 0:
        os.makedirs(d)
    with open(os.path.join(d, "f%02d" % (i % 100)), "wb") as f:
        f.write(rnd.randbytes(rnd.randrange(0, 2048)))
'''


class Daemon:
    """One `dagfs mount` of a store; unmounts on close."""

    def __init__(self, dagfs, store, mnt, opts):
        self.dagfs, self.store, self.mnt = dagfs, store, mnt
        os.makedirs(mnt, exist_ok=True)
        argv = [dagfs, "--store", store, "mount", mnt]
        if opts:
            argv += ["-o", opts]
        r = subprocess.run(argv, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"dagfs mount failed: {r.stderr}")
        m = re.search(r"daemon pid (\d+)", r.stderr)
        if not m:
            raise RuntimeError(f"no daemon pid in: {r.stderr}")
        self.pid = int(m.group(1))
        self.own, self.seen = None, 0

    def stats(self):
        # NB: read by a process of its own: a generated file is one
        # snapshot per reading process for a few ms (see src/fs/unopened.rs).
        return subprocess.run(["cat", os.path.join(self.mnt, ".dagfs/stats")],
                              check=True, capture_output=True, text=True).stdout

    def read_path(self):
        for line in self.stats().splitlines():
            if line.startswith("fs reads"):
                return line.split(None, 2)[2]
        return "?"

    def _requests(self):
        m = re.search(r"^fs ops\s+(.*)$", self.stats(), re.M)
        return sum(int(v) for v in re.findall(r"(\d+)", m.group(1))) if m else 0

    def requests(self):
        """FUSE requests served so far (all kinds), less those of reading
        the stats (measured once, at the first call)."""
        if self.own is None:
            a = self._requests()
            self.own = self._requests() - a
        self.seen += 1
        return self._requests() - self.own * self.seen

    def vm(self, field):
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        return 0

    def close(self):
        if os.path.ismount(self.mnt):
            r = subprocess.run([self.dagfs, "umount", self.mnt], capture_output=True, text=True)
            if r.returncode != 0 and os.path.ismount(self.mnt):
                subprocess.run(["umount", "-l", self.mnt])
        for _ in range(500):
            if not os.path.exists(f"/proc/{self.pid}"):
                break
            time.sleep(0.01)


def build_outputs(a, work):
    pipe = os.path.join(work, "pipeline")
    native = os.path.join(work, "native")
    os.makedirs(pipe)
    os.makedirs(native)
    with open(os.path.join(pipe, "gen_tree.py"), "w") as f:
        f.write(GEN_TREE)
    big_mib = 64 if a.quick else 1024
    files = 10_000 if a.quick else 100_000
    with open(os.path.join(pipe, "dagfs.toml"), "w") as f:
        f.write(f'''name = "bench"

[tasks.big]
run = 'head -c {big_mib}M /dev/urandom > "$DAGFS_OUT/big.bin"'

[tasks.tree]
run = 'python3 gen_tree.py "$DAGFS_OUT" {files} && cp -a "$DAGFS_OUT" {native}/tree'
''')
    log(f"bench-fuse: building outputs ({big_mib} MiB file, {files:,} files) ...")
    start = time.perf_counter()
    subprocess.run([a.dagfs, "--store", os.path.join(work, "store"), "run", "-j", "2"],
                   cwd=pipe, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    log(f"bench-fuse: outputs built in {time.perf_counter() - start:.1f} s")
    return big_mib, files


def build_million(a, work, n):
    store = os.path.join(work, "store-index")
    pipe = os.path.join(work, "pipeline-index")
    os.makedirs(pipe)
    with open(os.path.join(pipe, "dagfs.toml"), "w") as f:
        f.write('name = "one"\n\n[tasks.one]\nrun = \'echo one > "$DAGFS_OUT/one.txt"\'\n')
    subprocess.run([a.dagfs, "--store", store, "run"], cwd=pipe, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log(f"bench-fuse: filling an index with {n:,} entries (examples/bench_entries) ...")
    start = time.perf_counter()
    subprocess.run([a.entries_bin, store, str(n)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log(f"bench-fuse: index filled in {time.perf_counter() - start:.1f} s")
    return store


class Table:
    def __init__(self):
        self.rows = []

    def add(self, op, native, mount, goal, reqs=None):
        ratio = mount / native if native else float("nan")
        met = "" if goal is None else ("yes" if ratio <= goal else "NO")
        self.rows.append((op, f"{native:.3f}", f"{mount:.3f}", f"{ratio:.2f}",
                          "" if goal is None else f"<= {goal:.3g}", met,
                          "" if reqs is None else f"{reqs:,.0f}"))

    def text(self):
        head = ("operation", "native s", "mount s", "ratio", "goal", "met?", "reqs")
        rows = [head] + self.rows
        w = [max(len(r[i]) for r in rows) for i in range(len(head))]
        out = []
        for k, r in enumerate(rows):
            out.append("  ".join(c.ljust(w[i]) if i == 0 else c.rjust(w[i]) for i, c in enumerate(r)))
            if k == 0:
                out.append("  ".join("-" * x for x in w))
        return "\n".join(out)


def measure(a, d, native, mount, cmd, runs, cold, table, label, goal):
    """Alternate native and mount runs; median of `runs` each."""
    n_times, m_times, reqs = [], [], []
    for _ in range(runs):
        # NB: warm: an untimed pass right before each timed one (this VM
        # sheds page cache slowly even without memory pressure).
        if cold:
            drop_caches()
        else:
            timed(cmd.format(p=native))
        n_times.append(timed(cmd.format(p=native)))
        if cold:
            drop_caches()
        else:
            timed(cmd.format(p=mount))
        before = d.requests()
        m_times.append(timed(cmd.format(p=mount)))
        reqs.append(max(0, d.requests() - before))
    n, m = statistics.median(n_times), statistics.median(m_times)
    table.add(label, n, m, goal, statistics.median(reqs))
    log(f"  {label:<22} native {n:7.3f}  mount {m:7.3f}  ({m / n:.2f}x)")


def run_config(a, work, opts, sizes, million_store):
    big_mib, files = sizes
    mnt = os.path.join(work, "mnt")
    store = os.path.join(work, "store")
    d = Daemon(a.dagfs, store, mnt, opts)
    out = []
    try:
        # NB: /dags/<dag>/<task> is the task's latest output, a directory.
        mnt_big = os.path.join(mnt, "dags/bench/big/big.bin")
        # NB: the native side of the large file is its blob itself: the same
        # blocks on disk, so a cold read compares the read paths, not where
        # two copies happen to lie.
        digest = os.getxattr(mnt_big, "user.dagfs.digest").decode()
        nat_big = os.path.join(store, "blobs", digest[:2], digest)
        nat_tree = os.path.join(work, "native/tree")
        mnt_tree = os.path.join(mnt, "dags/bench/tree")
        threads = re.search(r"threads=(\d+)", opts or "")
        head = (f"config: -o {opts or '(defaults)'}; "
                f"threads {threads.group(1) if threads else 'default (DEFAULT_THREADS)'}")
        log(f"bench-fuse: {head}")
        t = Table()
        size = "1 GiB" if big_mib == 1024 else f"{big_mib} MiB"
        runs = a.runs
        read_goal = 1 / 0.95
        cold_runs = 1 if a.quick else runs
        measure(a, d, nat_big, mnt_big, "cat {p} >/dev/null", cold_runs, True, t,
                f"read {size} cold", read_goal)
        measure(a, d, nat_big, mnt_big, "cat {p} >/dev/null", max(runs, 5), False, t,
                f"read {size} warm", read_goal)
        measure(a, d, nat_big, mnt_big, "dd if={p} of=/dev/null bs=1M", cold_runs, True, t,
                f"read {size} cold, 1 MiB reads", read_goal)
        path = d.read_path()  # after reads: passthrough may be refused at the first open
        ops = [
            ("find", "find {p} >/dev/null", 1.2),
            ("ls -lR", "ls -lR {p} >/dev/null", 1.2),
            ("du -s", "du -s {p} >/dev/null", 1.2),
            ("tar cf - | cat", "tar cf - -C {p} . | cat >/dev/null", 1.2),
            (f"cat all {files // 1000}k files", "find {p} -type f -print0 | xargs -0 cat >/dev/null", 1.5),
        ]
        for label, cmd, goal in ops:
            measure(a, d, nat_tree, mnt_tree, cmd, runs, False, t, label + " (warm)", goal)
        for label, cmd, _ in ops:
            if label.startswith("ls") or label.startswith("cat"):
                measure(a, d, nat_tree, mnt_tree, cmd, 1, True, t, label + " (cold)", None)
        hwm_walk = d.vm("VmHWM")
        out.append(head)
        out.append(f"read path: {path}")
        out.append(t.text())
        out.append(f"daemon VmHWM after walking and reading the {files:,}-file tree: "
                   f"{hwm_walk / MIB:.1f} MiB")
    finally:
        d.close()
    if million_store:
        n = 100_000 if a.quick else 1_000_000
        d = Daemon(a.dagfs, million_store, mnt, opts)
        try:
            base = d.vm("VmHWM")
            start = time.perf_counter()
            r = sh(f"ls {mnt}/keys | wc -l", capture_output=True, text=True)
            wall = time.perf_counter() - start
            listed = int(r.stdout.strip())
            hwm = d.vm("VmHWM")
            ok = "met" if hwm <= 150 * MIB else "NOT met"
            out.append(f"daemon VmHWM with {n:,} index entries: {base / MIB:.1f} MiB after mount, "
                       f"{hwm / MIB:.1f} MiB after `ls keys | wc -l` ({listed:,} listed in "
                       f"{wall:.1f} s); goal <= 150 MiB: {ok}")
            if listed != n:
                out.append(f"WARNING: listed {listed:,} keys, expected {n:,}")
        finally:
            d.close()
    return "\n".join(out)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dagfs", required=True)
    p.add_argument("--entries-bin", required=True, help="examples/bench_entries binary")
    p.add_argument("--workdir", required=True, help="an empty directory on a real disk")
    p.add_argument("--quick", action="store_true", help="64 MiB file, 10,000 files, 100,000 entries")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--config", action="append", default=[],
                   help="mount -o options of one configuration to measure (repeatable); "
                        "default: one run with the daemon's defaults")
    p.add_argument("--no-index", action="store_true", help="skip the large-index memory test")
    a = p.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench-fuse: needs root (drop_caches, mounting)")
    work = a.workdir
    started = time.perf_counter()
    sizes = build_outputs(a, work)
    million = None if a.no_index else build_million(a, work, 100_000 if a.quick else 1_000_000)
    kernel = os.uname().release
    reports = []
    for opts in a.config or [""]:
        reports.append(run_config(a, work, opts, sizes, million))
    print(f"\ndagfs bench-fuse: kernel {kernel}, {os.cpu_count()} CPUs, "
          f"{'quick' if a.quick else 'full'} sizes, median of {a.runs}\n")
    print("\n\n".join(reports))
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
