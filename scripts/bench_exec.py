#!/usr/bin/env python3
"""Execution-overhead benchmark for dagfs; run it through scripts/bench-exec.

Scenarios, each with its own fresh store (`--store`) and `-j2`:

  single       one task, run = "true" (at least 30 timed cached runs; goal:
               a fully cached 1-task run, whole process, <= 10 ms)
  chain-1000   task i depends on task i-1, run = "true"
  wide-1000    1,000 independent tasks, run = "true"
  layers-10k   100 layers of 100 tasks, each depending on 2 tasks of the layer
               before, run = "true"

For each: one cold run fills the cache (reported, not in the median), then
--reps fully cached re-runs are timed. A fully cached re-run is answered by
the pipeline's run memo (exec::memo), as a user's is; the row "chain-1000
cached, full path" times the same runs with the memo removed before each
(outside the timing), which is what a cached run costs after any change.
Then:

  c-build-35   a 35-task C build (31 compiles of one function each, main.c,
               ar, link, run the test) fully cached, against make's no-op on
               the same sources and rules (`make -s`: nothing to do), runs
               alternated.

  cold-1000    a cold run of 1,000 tasks `echo i > $DAGFS_OUT/out`, each
               repetition with a fresh store, against the same 1,000 commands
               run by `xargs -P2` (`sh -c 'echo i > DIR/i'`).

  cold-chain   a cold run of a chain of --chain-n tasks (10,000; the issue's
               figure is 100,000), task i `echo i > $DAGFS_OUT/out` depending
               on task i-1, against a shell loop running the same commands one
               by one (`sh -c 'echo i > DIR/i'` per line of a script run by
               sh); --chain-reps pairs, dagfs first, each with a fresh store.

Wall time is the whole process, spawn to exit (os.wait4). dagfs's stderr goes
to /dev/null in timed runs. An untimed check run after the timed ones keeps
stderr and verifies the scenario really was all hits.

Peak RSS is the child's ru_maxrss as reported by /usr/bin/time -f %M. Not
os.wait4's own ru_maxrss: a process spawned from Python starts with Python's
memory map and exec keeps that map's high-water mark, so every figure would be
at least Python's ~13 MiB. For the cached scenarios it comes from the check
run; cold runs are all run under /usr/bin/time (about 1 ms more per run, for
dagfs and xargs alike). ru_maxrss includes waited-for children: for a cold run
it is the largest of dagfs and its task shells.
"""

import argparse
import os
import re
import shutil
import statistics
import sys
import tempfile
import time

SUMMARY = re.compile(r"(\d+) executed, (\d+) cached, (\d+) failed")


GNU_TIME = "/usr/bin/time"


def spawn_timed(argv, stdin=None, stdout=None, stderr=None, env=None, rss=False):
    """Runs argv to completion; returns (exit code, wall seconds, peak RSS KiB).

    The RSS is measured only with rss=True (see the module doc), else None.
    """
    rss_file = None
    if rss and os.access(GNU_TIME, os.X_OK):
        fd, rss_file = tempfile.mkstemp(prefix="dagfs-bench-rss-")
        os.close(fd)
        argv = [GNU_TIME, "-f", "%M", "-o", rss_file, "--"] + list(argv)
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, stdin or os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, stdout or os.devnull, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644),
        (os.POSIX_SPAWN_OPEN, 2, stderr or os.devnull, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644),
    ]
    start = time.perf_counter()
    pid = os.posix_spawnp(argv[0], argv, env if env is not None else os.environ, file_actions=actions)
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - start
    peak = None
    if rss_file:
        with open(rss_file) as f:
            # NB: time writes "Command exited with non-zero status N" first on failure.
            lines = f.read().split()
        os.unlink(rss_file)
        peak = int(lines[-1]) if lines and lines[-1].isdigit() else None
    elif rss:
        peak = usage.ru_maxrss  # overstated by the harness: see the module doc
    return os.waitstatus_to_exitcode(status), wall, peak


def write_pipeline(path, tasks):
    """tasks: list of (name, run, deps). Writes a dagfs.toml in directory path."""
    os.makedirs(path, exist_ok=True)
    lines = [f'name = "{os.path.basename(path)}"', ""]
    for name, run, deps in tasks:
        lines.append(f"[tasks.{name}]")
        lines.append(f"run = '{run}'")
        if deps:
            lines.append("deps = [" + ", ".join(f'"{d}"' for d in deps) + "]")
        lines.append("")
    toml = os.path.join(path, "dagfs.toml")
    with open(toml, "w") as f:
        f.write("\n".join(lines))
    return toml


def chain(n):
    return [(f"t{i:05}", "true", [f"t{i - 1:05}"] if i else []) for i in range(n)]


def wide(n):
    return [(f"t{i:05}", "true", []) for i in range(n)]


def layers(depth, width):
    tasks = []
    for layer in range(depth):
        for i in range(width):
            deps = []
            if layer:
                deps = [f"l{layer - 1:03}_{i:03}", f"l{layer - 1:03}_{(i + 1) % width:03}"]
            tasks.append((f"l{layer:03}_{i:03}", "true", deps))
    return tasks


def trivial_chain(n):
    return [(f"t{i:06}", f'echo {i} > "$DAGFS_OUT/out"', [f"t{i - 1:06}"] if i else []) for i in range(n)]


def trivial(n):
    return [(f"t{i:05}", f'echo {i} > "$DAGFS_OUT/out"', []) for i in range(n)]


class Bench:
    def __init__(self, args, scratch):
        self.dagfs = os.path.abspath(args.dagfs)
        self.jobs = str(args.jobs)
        self.scratch = scratch
        self.env = {k: v for k, v in os.environ.items() if k != "DAGFS_STORE"}
        self.stores = 0

    def fresh_store(self):
        self.stores += 1
        path = os.path.join(self.scratch, f"store-{self.stores}")
        os.mkdir(path)
        return path

    def run(self, store, toml, log=None, rss=False):
        argv = [self.dagfs, "--store", store, "run", "-j", self.jobs, "-f", toml]
        return spawn_timed(argv, stderr=log, env=self.env, rss=rss)

    def checked_run(self, store, toml, want_executed, what):
        """An untimed run whose stderr is kept; fails loudly on surprises.

        Returns (wall seconds, peak RSS KiB)."""
        log = os.path.join(self.scratch, "check.log")
        code, wall, rss = self.run(store, toml, log, rss=True)
        with open(log, errors="replace") as f:
            text = f.read()
        found = SUMMARY.findall(text)
        if code != 0 or not found:
            tail = "\n".join(text.splitlines()[-20:])
            sys.exit(f"bench: {what}: dagfs exited {code}{'' if found else ', no summary line'}\n{tail}")
        executed = int(found[-1][0])
        if executed != want_executed:
            sys.exit(f"bench: {what}: expected {want_executed} executed, summary says {executed}")
        return wall, rss


def fmt_s(seconds):
    if seconds < 0.01:
        return f"{seconds * 1000:.1f} ms"
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def fmt_us(seconds):
    us = seconds * 1e6
    return f"{us:.0f} us" if us < 10000 else f"{us / 1000:.1f} ms"


def fmt_kib(kib):
    return "n/a" if kib is None else f"{kib / 1024:.1f} MiB"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dagfs", required=True, help="the dagfs binary")
    ap.add_argument("--reps", type=int, default=5, help="timed cached re-runs per scenario (5)")
    ap.add_argument("--cold-reps", type=int, default=3, help="cold runs of dagfs and of xargs (3)")
    ap.add_argument("-j", "--jobs", type=int, default=2, help="dagfs -j and xargs -P (2)")
    ap.add_argument("--chain-n", type=int, default=10000,
                    help="tasks of the cold chain (10,000; the issue's figure: 100,000); 0 skips it")
    ap.add_argument("--chain-reps", type=int, default=1, help="cold chain runs of dagfs and of the loop (1)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    ap.add_argument("--dagron-python", help="a Python (>= 3.12) with dagron 0.1.1 installed: adds the "
                    "chain-1000 comparison with dagron's CachedDAGExecutor")
    args = ap.parse_args()
    if not os.access(args.dagfs, os.X_OK):
        sys.exit(f"bench: no executable dagfs at {args.dagfs}")

    scratch = tempfile.mkdtemp(prefix="dagfs-bench-")
    try:
        rows, cold_ratio, layers_median, single_median, make_ratio, chain_ratio = run_all(args, scratch)
    finally:
        if args.keep:
            print(f"(kept {scratch})")
        else:
            for dirpath, dirnames, _ in os.walk(scratch):
                for d in dirnames:
                    try:
                        os.chmod(os.path.join(dirpath, d), 0o755)
                    except OSError:
                        pass
            shutil.rmtree(scratch, ignore_errors=True)

    header = ["scenario", "tasks", "runs", "median wall", "per task", "peak RSS", "cold fill", "vs baseline"]
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    print()
    print(f"dagfs bench-exec: -j{args.jobs}; wall = median of the timed runs; per task = wall / tasks")
    print()
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))
    print()
    print("goals:")
    met = "met" if single_median <= 0.010 else "NOT met"
    print(f"  fully cached 1-task run, whole process, <= 10 ms: {fmt_s(single_median)} ({met})")
    met = "met" if layers_median < 1.0 else "NOT met"
    print(f"  fully cached 10,000-task run well under 1 s: {fmt_s(layers_median)} ({met})")
    if make_ratio is not None:
        met = "met" if make_ratio <= 1.0 else "NOT met"
        print(f"  fully cached 35-task C build <= 1.0x make's no-op: {make_ratio:.2f}x ({met})")
    met = "met" if cold_ratio <= 1.5 else "NOT met"
    print(f"  cold 1,000 trivial tasks <= 1.5x xargs -P{args.jobs}: {cold_ratio:.2f}x ({met})")
    if chain_ratio is not None:
        met = "met" if chain_ratio <= 1.5 else "NOT met"
        print(f"  cold {args.chain_n:,}-task chain <= 1.5x a shell loop: {chain_ratio:.2f}x ({met})")


def versus_dagron(args, bench, scratch, store, toml):
    """The fully cached chain-1000, dagfs and dagron alternated run by run."""
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench_dagron_chain.py")
    cache = os.path.join(scratch, "dagron-cache")
    argv = [args.dagron_python, script, "1000", cache]
    out = os.path.join(scratch, "dagron.out")
    code, fill, _ = spawn_timed(argv, stdout=out)
    if code != 0 or "misses=1000" not in open(out).read():
        sys.exit(f"bench: dagron cold fill failed (exit {code}): {open(out).read()}")
    print(f"chain-1000 vs dagron: {args.reps} runs each, alternated ...", end="", flush=True)
    dagfs_walls, dagron_walls, pairs = [], [], []
    for _ in range(args.reps):
        code, a, _ = bench.run(store, toml)
        if code != 0:
            sys.exit(f"bench: chain-1000: cached run exited {code}")
        code, b, _ = spawn_timed(argv, stdout=out)
        if code != 0 or "hits=1000 misses=0" not in open(out).read():
            sys.exit(f"bench: dagron cached run was not all hits (exit {code}): {open(out).read()}")
        dagfs_walls.append(a)
        dagron_walls.append(b)
        pairs.append(b / a)
    _, rss = bench.checked_run(store, toml, 0, "chain-1000 check (vs dagron)")
    ratio = statistics.median(pairs)
    print(f" dagfs {fmt_s(statistics.median(dagfs_walls))}, dagron {fmt_s(statistics.median(dagron_walls))}: "
          f"dagfs {ratio:.1f}x faster (median of pair ratios)")
    return [
        ["chain-1000 cached, paired", 1000, args.reps, fmt_s(statistics.median(dagfs_walls)),
         fmt_us(statistics.median(dagfs_walls) / 1000), fmt_kib(rss), "", f"{ratio:.1f}x faster than dagron"],
        ["chain-1000 cached, dagron 0.1.1", 1000, args.reps, fmt_s(statistics.median(dagron_walls)),
         fmt_us(statistics.median(dagron_walls) / 1000), "", fmt_s(fill), "baseline"],
    ]


def c_project(path, units=31):
    """A C project: units one-function files, a header, main.c; its dagfs.toml
    (35 tasks) and a Makefile with the same rules. Returns the directory."""
    src = os.path.join(path, "src")
    os.makedirs(src, exist_ok=True)
    with open(os.path.join(src, "lib.h"), "w") as f:
        f.write("".join(f"int f{i}(int x);\n" for i in range(units)))
    for i in range(units):
        with open(os.path.join(src, f"u{i}.c"), "w") as f:
            f.write(f'#include "lib.h"\nint f{i}(int x) {{ return x + {i}; }}\n')
    with open(os.path.join(src, "main.c"), "w") as f:
        calls = " + ".join(f"f{i}(1)" for i in range(units))
        f.write(f'#include <stdio.h>\n#include "lib.h"\nint main(void) {{ printf("%d\\n", {calls}); return 0; }}\n')
    lines = ['name = "cbuild"', ""]
    for i in range(units):
        lines += [f"[tasks.u{i}]",
                  f"run = 'cc -O2 -c src/u{i}.c -o \"$DAGFS_OUT/u{i}.o\"'",
                  f'inputs = ["src/u{i}.c", "src/lib.h"]', ""]
    lines += ["[tasks.main]",
              "run = 'cc -O2 -c src/main.c -o \"$DAGFS_OUT/main.o\"'",
              'inputs = ["src/main.c", "src/lib.h"]', "",
              "[tasks.archive]",
              "run = 'ar rcs \"$DAGFS_OUT/libu.a\" \"$DAGFS_IN\"/u*/u*.o'",
              "deps = [" + ", ".join(f'"u{i}"' for i in range(units)) + "]", "",
              "[tasks.link]",
              "run = 'cc \"$DAGFS_IN/main/main.o\" \"$DAGFS_IN/archive/libu.a\" -o \"$DAGFS_OUT/app\"'",
              'deps = ["main", "archive"]', "",
              "[tasks.test]",
              "run = '\"$DAGFS_IN/link/app\" > \"$DAGFS_OUT/out\"'",
              'deps = ["link"]', ""]
    with open(os.path.join(path, "dagfs.toml"), "w") as f:
        f.write("\n".join(lines))
    objs = " ".join(f"build/u{i}.o" for i in range(units))
    with open(os.path.join(path, "Makefile"), "w") as f:
        f.write(f"""all: build/test.out
build/u%.o: src/u%.c src/lib.h
\t@mkdir -p build
\tcc -O2 -c $< -o $@
build/main.o: src/main.c src/lib.h
\t@mkdir -p build
\tcc -O2 -c $< -o $@
build/libu.a: {objs}
\tar rcs $@ $^
build/app: build/main.o build/libu.a
\tcc build/main.o build/libu.a -o $@
build/test.out: build/app
\t./build/app > $@
""")
    return path


def versus_make(args, bench, scratch):
    """The fully cached 35-task C build against make's no-op, alternated."""
    if not shutil.which("make") or not shutil.which("cc"):
        print("c-build-35 vs make: skipped (make or cc is missing)")
        return []
    d = c_project(os.path.join(scratch, "c-build"))
    toml = os.path.join(d, "dagfs.toml")
    store = bench.fresh_store()
    print("c-build-35: cold fills ...", end="", flush=True)
    time.sleep(2.1)  # NB: sources stamped within 2 s of a run get no memo.
    fill, _ = bench.checked_run(store, toml, 35, "c-build-35 cold fill")
    make = ["make", "-s", "-C", d]
    code, mfill, _ = spawn_timed(make, stdout=os.path.join(scratch, "make.out"))
    if code != 0:
        sys.exit(f"bench: make cold build failed (exit {code})")
    bench.checked_run(store, toml, 0, "c-build-35 check")
    reps = max(args.reps, 20)
    print(f" dagfs {fmt_s(fill)}, make {fmt_s(mfill)}; {reps} cached runs each, alternated ...", end="", flush=True)
    dagfs_walls, make_walls, pairs = [], [], []
    for _ in range(reps):
        code, a, _ = bench.run(store, toml)
        if code != 0:
            sys.exit(f"bench: c-build-35: cached run exited {code}")
        code, b, _ = spawn_timed(make, stdout=os.path.join(scratch, "make.out"))
        if code != 0 or os.path.getsize(os.path.join(scratch, "make.out")) != 0:
            sys.exit(f"bench: make's no-op did something (exit {code})")
        dagfs_walls.append(a)
        make_walls.append(b)
        pairs.append(a / b)
    bench.checked_run(store, toml, 0, "c-build-35 check")
    ratio = statistics.median(pairs)
    print(f" dagfs {fmt_s(statistics.median(dagfs_walls))}, make {fmt_s(statistics.median(make_walls))}")
    return [
        ["c-build-35 cached", 35, reps, fmt_s(statistics.median(dagfs_walls)),
         fmt_us(statistics.median(dagfs_walls) / 35), "", fmt_s(fill), f"{ratio:.2f}x make's no-op"],
        ["c-build-35 make no-op", 35, reps, fmt_s(statistics.median(make_walls)),
         fmt_us(statistics.median(make_walls) / 35), "", fmt_s(mfill), "baseline"],
    ], ratio


def full_path(args, bench, store, toml):
    """The chain-1000's cached runs with the memo removed before each."""
    reps = args.reps
    print(f"chain-1000 cached, full path: {reps} runs ...", end="", flush=True)
    walls = []
    for _ in range(reps):
        shutil.rmtree(os.path.join(store, "memo"), ignore_errors=True)
        code, wall, _ = bench.run(store, toml)
        if code != 0:
            sys.exit(f"bench: chain-1000 full path: run exited {code}")
        walls.append(wall)
    median = statistics.median(walls)
    print(f" median {fmt_s(median)}")
    return median


def run_all(args, scratch):
    bench = Bench(args, scratch)
    rows = []
    layers_median = None

    chain_store = chain_toml = None
    single_median = None
    for name, tasks in [("single cached", chain(1)),
                        ("chain-1000 cached", chain(1000)),
                        ("wide-1000 cached", wide(1000)),
                        ("layers-10k cached", layers(100, 100))]:
        n = len(tasks)
        toml = write_pipeline(os.path.join(scratch, name.split()[0]), tasks)
        store = bench.fresh_store()
        print(f"{name}: cold fill ...", end="", flush=True)
        cold_wall, _ = bench.checked_run(store, toml, n, f"{name} cold fill")
        # A 1-task run takes milliseconds: more runs for a steady median.
        reps = args.reps if n > 1 else max(args.reps, 30)
        print(f" {fmt_s(cold_wall)}; {reps} cached runs ...", end="", flush=True)
        walls = []
        for _ in range(reps):
            code, wall, _ = bench.run(store, toml)
            if code != 0:
                sys.exit(f"bench: {name}: cached run exited {code}")
            walls.append(wall)
        _, peak = bench.checked_run(store, toml, 0, f"{name} check")
        median = statistics.median(walls)
        print(f" median {fmt_s(median)}")
        if n == 10000:
            layers_median = median
        if n == 1:
            single_median = median
        if name.startswith("chain"):
            chain_store, chain_toml = store, toml
        rows.append([name, n, reps, fmt_s(median), fmt_us(median / n), fmt_kib(peak),
                     fmt_s(cold_wall), ""])
        if name.startswith("chain"):
            full = full_path(args, bench, store, toml)
            rows.append(["chain-1000 cached, full path", n, args.reps, fmt_s(full), fmt_us(full / n), "",
                         "", f"memo {full / median:.1f}x faster"])

    if args.dagron_python:
        rows.extend(versus_dagron(args, bench, scratch, chain_store, chain_toml))
    else:
        print("chain-1000 vs dagron: skipped (no --dagron-python; scripts/bench-exec installs dagron where a Python >= 3.12 is found)")

    make_rows = versus_make(args, bench, scratch)
    make_ratio = None
    if make_rows:
        make_rows, make_ratio = make_rows
        rows.extend(make_rows)

    # Cold: dagfs vs xargs on the same 1,000 trivial commands.
    n = 1000
    toml = write_pipeline(os.path.join(scratch, "cold-1000"), trivial(n))
    dagfs_walls, dagfs_rss = [], []
    print(f"cold-1000: {args.cold_reps} dagfs runs ...", end="", flush=True)
    for rep in range(args.cold_reps):
        wall, rss = cold_run(bench, toml, rep == 0, "cold-1000")
        dagfs_walls.append(wall)
        dagfs_rss.append(rss)
    print(f" median {fmt_s(statistics.median(dagfs_walls))}; {args.cold_reps} xargs runs ...", end="", flush=True)

    xargs_walls, xargs_rss = [], []
    for rep in range(args.cold_reps):
        outdir = os.path.join(scratch, f"xargs-{rep}")
        os.mkdir(outdir)
        cmds = os.path.join(scratch, f"xargs-{rep}.cmds")
        with open(cmds, "w") as f:
            for i in range(n):
                f.write(f"echo {i} > {outdir}/{i}\n")
        argv = ["xargs", "-d", "\n", "-P", str(args.jobs), "-n", "1", "sh", "-c"]
        wall, rss = baseline_run(argv, cmds, outdir, n, "xargs")
        xargs_walls.append(wall)
        xargs_rss.append(rss)
    print(f" median {fmt_s(statistics.median(xargs_walls))}")

    cold_rows, ratio = versus_rows("cold-1000", n, args.cold_reps, (dagfs_walls, dagfs_rss),
                                   (xargs_walls, xargs_rss), f"xargs -P{args.jobs}", "xargs")
    rows.extend(cold_rows)
    chain_rows, chain_ratio = versus_loop(args, bench, scratch)
    rows.extend(chain_rows)
    return rows, ratio, layers_median, single_median, make_ratio, chain_ratio


def cold_run(bench, toml, check, what):
    """One timed cold run with a fresh store: (wall, peak RSS); `check`: then
    an untimed run that must find everything cached."""
    store = bench.fresh_store()
    code, wall, rss = bench.run(store, toml, rss=True)
    if code != 0:
        sys.exit(f"bench: {what}: dagfs exited {code}")
    if check:
        bench.checked_run(store, toml, 0, f"{what} check")
    return wall, rss


def baseline_run(argv, stdin, outdir, n, what):
    """One timed run of a baseline that must leave `n` files in `outdir`:
    (wall, peak RSS)."""
    code, wall, rss = spawn_timed(argv, stdin=stdin, rss=True)
    if code != 0 or len(os.listdir(outdir)) != n:
        sys.exit(f"bench: {what} baseline failed (exit {code})")
    return wall, rss


def versus_rows(name, n, reps, dagfs, base, base_name, base_short):
    """The table rows of dagfs against a baseline, each (walls, RSSs); and
    the ratio of their medians."""
    dagfs_median = statistics.median(dagfs[0])
    base_median = statistics.median(base[0])
    ratio = dagfs_median / base_median
    rows = [
        [f"{name} dagfs", n, reps, fmt_s(dagfs_median), fmt_us(dagfs_median / n),
         fmt_kib(max(dagfs[1], default=None)), "", f"{ratio:.2f}x {base_short}"],
        [f"{name} {base_name}", n, reps, fmt_s(base_median), fmt_us(base_median / n),
         fmt_kib(max(base[1], default=None)), "", "baseline"],
    ]
    return rows, ratio


def versus_loop(args, bench, scratch):
    """The cold chain: dagfs, then a shell loop over the same commands, in pairs."""
    n = args.chain_n
    if n <= 0:
        return [], None
    toml = write_pipeline(os.path.join(scratch, "cold-chain"), trivial_chain(n))
    dagfs_walls, dagfs_rss, loop_walls, loop_rss = [], [], [], []
    for rep in range(args.chain_reps):
        print(f"cold-chain-{n}: pair {rep + 1}/{args.chain_reps}: dagfs ...", end="", flush=True)
        wall, rss = cold_run(bench, toml, rep == 0, "cold-chain")
        dagfs_walls.append(wall)
        dagfs_rss.append(rss)
        print(f" {fmt_s(wall)}; loop ...", end="", flush=True)
        outdir = os.path.join(scratch, f"loop-{rep}")
        os.mkdir(outdir)
        script = os.path.join(scratch, f"loop-{rep}.sh")
        with open(script, "w") as f:
            for i in range(n):
                f.write(f"sh -c 'echo {i} > {outdir}/{i}'\n")
        wall, rss = baseline_run(["sh", script], None, outdir, n, "shell loop")
        loop_walls.append(wall)
        loop_rss.append(rss)
        print(f" {fmt_s(wall)}")
    return versus_rows(f"cold-chain-{n}", n, args.chain_reps, (dagfs_walls, dagfs_rss),
                       (loop_walls, loop_rss), "shell loop", "loop")


if __name__ == "__main__":
    main()
