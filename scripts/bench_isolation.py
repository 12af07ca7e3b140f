#!/usr/bin/env python3
"""Task isolation's cost on a real C build; run it through scripts/bench-isolation.

The build: zstd's library (the C sources the zstd-sys crate ships, from the
cargo registry), one dagfs task per .c file (`gcc -O2 -c`, 40 tasks), and one
task archiving the objects (`ar`), -j2, cold: each run starts from an empty
store. Two modes, alternated run by run:

  isolated   the default: each task in its own PID and mount namespaces
             (store read-only but for its output), see src/exec/isolate.rs,
             with `hermetic = "warn"` (the default): every open under the
             pipeline directory watched (src/exec/hermetic.rs)
  isolated, hermetic off   the same with `hermetic = "off"`
  off        DAGFS_ISOLATION=off and `hermetic = "off"`: each task in its own
             process group only, as every task ran before issue 13

Wall time is the whole `dagfs run` process. Prints the median, min and max of
each mode and the ratios of the medians (goal: isolated <= 1.10x off).
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time


def pipeline(lib, files, hermetic):
    out = ['name = "zstd"\n', f'hermetic = "{hermetic}"\n']
    flags = "-O2 -DZSTD_DISABLE_ASM -DZSTD_LEGACY_SUPPORT=1 -Ilib -Ilib/common"
    names = []
    for f in files:
        name = "cc_" + f.replace("/", "_").replace(".c", "")
        names.append(name)
        out.append(
            f'[tasks.{name}]\nrun = "gcc {flags} -c lib/{f} -o $DAGFS_OUT/{os.path.basename(f)[:-2]}.o"\n'
            f'inputs = ["lib/"]\n'
        )
    deps = ", ".join(f'"{n}"' for n in names)
    out.append(
        '[tasks.archive]\nrun = "ar rcs $DAGFS_OUT/libzstd.a $DAGFS_IN/*/*.o"\n'
        f"deps = [{deps}]\n"
    )
    return "".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dagfs", required=True)
    ap.add_argument("--zstd-lib", required=True, help="zstd's lib/ directory")
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()

    work = tempfile.mkdtemp(prefix="dagfs-bench-iso-")
    try:
        shutil.copytree(a.zstd_lib, os.path.join(work, "lib"))
        files = sorted(
            os.path.relpath(os.path.join(d, f), os.path.join(work, "lib"))
            for d, _, fs in os.walk(os.path.join(work, "lib"))
            for f in fs
            if f.endswith(".c")
        )
        for h in ("warn", "off"):
            with open(os.path.join(work, f"dagfs-{h}.toml"), "w") as fh:
                fh.write(pipeline(os.path.join(work, "lib"), files, h))
        modes = {
            "isolated": ("warn", {}),
            "isolated, hermetic off": ("off", {}),
            "off": ("off", {"DAGFS_ISOLATION": "off"}),
        }
        times = {m: [] for m in modes}
        for rep in range(a.reps + 1):
            for m, (h, extra) in modes.items():
                store = os.path.join(work, "store-" + m.replace(" ", "").replace(",", "-"))
                shutil.rmtree(store, ignore_errors=True)
                env = dict(os.environ, **extra)
                env.pop("DAGFS_STORE", None)
                t = time.monotonic()
                p = subprocess.run(
                    [a.dagfs, "--store", store, "run", "-j2", "-f", f"dagfs-{h}.toml"],
                    cwd=work, env=env, stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                )
                took = time.monotonic() - t
                if p.returncode != 0 or f"{len(files) + 1} executed" not in p.stderr:
                    sys.exit(f"{m}: the build failed or ran something else:\n{p.stderr}")
                if "warning: task" in p.stderr or (h == "warn" and "not checked" in p.stderr):
                    sys.exit(f"{m}: the declared build was not clean, or not watched:\n{p.stderr}")
                if rep > 0:  # the first round warms the page cache
                    times[m].append(took)
        print(f"zstd: {len(files)} compile tasks + 1 archive, -j2, cold (empty store), {a.reps} runs each, alternated\n")
        print(f"| mode | median | min | max |")
        print(f"|---|---|---|---|")
        for m, ts in times.items():
            print(f"| {m} | {statistics.median(ts):.3f} s | {min(ts):.3f} s | {max(ts):.3f} s |")
        med = {m: statistics.median(ts) for m, ts in times.items()}
        print()
        print(f"isolated + hermetic warn / off (medians): {med['isolated'] / med['off']:.3f}x (goal <= 1.10x)")
        print(f"isolated + hermetic warn / isolated, hermetic off: {med['isolated'] / med['isolated, hermetic off']:.3f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
