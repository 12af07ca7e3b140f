#!/usr/bin/env python3
"""Times `dagfs graph` (every format) and the web view's pages on a generated
pipeline of N tasks (default 1,000: layers of 100, each task depending on two
tasks of earlier layers), after one cold run. Baseline: `dagfs stats` on the
same store (opening the store and printing a few counters), so the ratio is
what drawing the graph costs on top of opening the store."""
import argparse, json, os, random, re, shutil, subprocess, tempfile, time, urllib.request


def timed(f, runs):
    best = None
    for _ in range(runs):
        t = time.perf_counter()
        f()
        d = time.perf_counter() - t
        best = d if best is None else min(best, d)
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dagfs", required=True)
    ap.add_argument("--tasks", type=int, default=1000)
    ap.add_argument("--width", type=int, default=100)
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="dagfs-bench-graph.")
    try:
        store, pipe = os.path.join(work, "store"), os.path.join(work, "p")
        os.makedirs(pipe)
        rnd = random.Random(1)
        lines = ['name = "bench"']
        for i in range(a.tasks):
            lines.append(f"[tasks.t{i}]")
            lines.append(f'run = "echo {i} > $DAGFS_OUT/o"')
            layer = i // a.width
            if layer:
                deps = sorted({f"t{rnd.randrange(layer * a.width)}" for _ in range(2)})
                lines.append("deps = [" + ", ".join(f'"{d}"' for d in deps) + "]")
        f = os.path.join(pipe, "dagfs.toml")
        open(f, "w").write("\n".join(lines) + "\n")
        env = dict(os.environ, DAGFS_STORE=store)
        env.pop("DAGFS_UI_TOKEN", None)
        d = a.dagfs
        t = time.perf_counter()
        subprocess.run([d, "run", "-f", f, "-j", "2"], env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        print(f"cold run of {a.tasks} tasks: {time.perf_counter() - t:.2f}s (not part of the table)")
        run = lambda *args: subprocess.run([d, *args], env=env, check=True,
                                           stdout=subprocess.DEVNULL)
        rows = []
        base = timed(lambda: run("stats"), a.runs)
        rows.append(("dagfs stats (baseline)", base))
        sizes = {}
        for fmt in ["dot", "json", "mermaid", "svg"]:
            out = subprocess.run([d, "graph", "-f", f, "--format", fmt], env=env,
                                 check=True, capture_output=True).stdout
            sizes[fmt] = len(out)
            rows.append((f"dagfs graph --format {fmt}", timed(lambda: run("graph", "-f", f, "--format", fmt), a.runs)))
        ui = subprocess.Popen([d, "ui", "--listen", "127.0.0.1:0"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            url = re.search(r"http://\S+", ui.stdout.readline()).group(0)
            get = lambda p: urllib.request.urlopen(url + p.lstrip("/")).read()
            for p in ["/", "/api/graph", "/task/1/t999", "/runs", "/stats"]:
                if p == "/task/1/t999" and a.tasks < 1000:
                    continue
                sizes[p] = len(get(p))
                rows.append((f"dagfs ui GET {p}", timed(lambda: get(p), a.runs)))
        finally:
            ui.terminate()
            ui.wait()
        print(f"\n{a.tasks} tasks, best of {a.runs}; ratio = time / `dagfs stats`\n")
        print(f"{'what':34} {'time':>9} {'ratio':>7} {'output':>10}")
        for name, secs in rows:
            key = name.split()[-1] if "graph --format" in name else name.split()[-1]
            size = sizes.get(key, "")
            size = f"{size / 1024:.0f} KiB" if size != "" else ""
            print(f"{name:34} {secs * 1000:7.1f}ms {secs / base:6.2f}x {size:>10}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
