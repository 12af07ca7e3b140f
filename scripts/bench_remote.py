#!/usr/bin/env python3
"""The remote tier on a real C build; run it through scripts/bench-remote.

The build: zstd's library (the C sources the zstd-sys crate ships), one
dagfs task per .c file (`gcc -O2 -c`) and one archiving the objects, -j2.
A BuildGrid (in-memory CAS and action cache) runs on a free port of
127.0.0.1. A producer store builds once with uploads on. Then, alternated
run by run, each from an empty store:

  local cold     no remote (`--no-remote`): the baseline
  from remote    `--remote` to the fed server: every task a remote hit
  server down    `--remote` to a port nothing listens on

and once: the bytes a consumer fetched against the unique bytes of the
outputs, and a second upload of the same results (every entry queued again,
`dagfs remote flush`), which should send no blob bytes.
Goals: from remote <= 0.3x local cold; fetched <= 1.05x unique output
bytes; second upload 0 blob bytes; server down within 5% of local cold.
"""

import argparse
import hashlib
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from bench_isolation import pipeline  # noqa: E402  (same build, same tasks)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def start_bgd(bgd, config, work):
    port = free_port()
    cfg = open(config).read().replace("127.0.0.1:50051", f"127.0.0.1:{port}")
    path = os.path.join(work, "bgd.yml")
    open(path, "w").write(cfg)
    log = open(os.path.join(work, "bgd.log"), "w")
    proc = subprocess.Popen([bgd, "server", "start", path], stdout=log, stderr=log,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    return proc, f"grpc://127.0.0.1:{port}"


def dagfs_run(a, store, work, *args, env=None):
    t = time.monotonic()
    p = subprocess.run([a.dagfs, "--store", store, "run", "-j2", *args], cwd=work,
                       env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, text=True)
    took = time.monotonic() - t
    if p.returncode != 0:
        sys.exit(f"run {args} failed:\n{p.stderr}")
    return took, p.stderr


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dagfs", required=True)
    ap.add_argument("--bgd", required=True)
    ap.add_argument("--config", required=True)
    ap.add_argument("--zstd-lib", required=True)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()

    work = tempfile.mkdtemp(prefix="dagfs-bench-remote-")
    proc = None
    try:
        shutil.copytree(a.zstd_lib, os.path.join(work, "lib"))
        files = sorted(
            os.path.relpath(os.path.join(d, f), os.path.join(work, "lib"))
            for d, _, fs in os.walk(os.path.join(work, "lib"))
            for f in fs
            if f.endswith(".c")
        )
        with open(os.path.join(work, "dagfs.toml"), "w") as fh:
            # NB: hermetic checks off: this measures the remote tier, not them.
            fh.write(pipeline(os.path.join(work, "lib"), files, "off"))
        ntasks = len(files) + 1
        outs = {"cc_" + f.replace("/", "_").replace(".c", ""): os.path.basename(f)[:-2] + ".o" for f in files}
        outs["archive"] = "libzstd.a"
        env = dict(os.environ)
        for k in ("DAGFS_STORE", "DAGFS_REMOTE", "DAGFS_REMOTE_TOKEN"):
            env.pop(k, None)
        proc, url = start_bgd(a.bgd, a.config, work)
        deadline = time.monotonic() + 90
        while subprocess.run([a.dagfs, "--store", os.path.join(work, "probe"), "remote", "status"],
                             env=dict(env, DAGFS_REMOTE=url), capture_output=True).returncode != 0:
            if time.monotonic() > deadline or proc.poll() is not None:
                sys.exit("BuildGrid did not start: " + open(os.path.join(work, "bgd.log")).read())
            time.sleep(0.2)

        producer = os.path.join(work, "producer")
        subprocess.run([a.dagfs, "--store", producer, "config", "remote", url], check=True, capture_output=True)
        subprocess.run([a.dagfs, "--store", producer, "config", "remote_upload", "on"], check=True, capture_output=True)
        t_prod, err = dagfs_run(a, producer, work, env=env)
        if f"remote: uploaded {ntasks} results" not in err:
            sys.exit("the producer did not upload everything:\n" + err)
        up = re.search(r"\((\d+) blobs, (\d+) bytes sent", err)

        dead = f"grpc://127.0.0.1:{free_port()}"
        modes = {
            "local cold": ["--no-remote"],
            "from remote": ["--remote", url],
            "server down": ["--remote", dead],
        }
        times = {m: [] for m in modes}
        fetched = None
        for rep in range(a.reps + 1):
            for m, args in modes.items():
                store = os.path.join(work, "store")
                shutil.rmtree(store, ignore_errors=True)
                took, err = dagfs_run(a, store, work, *args, env=env)
                want = f"0 executed, {ntasks} cached" if m == "from remote" else f"{ntasks} executed"
                if want not in err:
                    sys.exit(f"{m}: expected `{want}`:\n{err}")
                if m == "from remote" and fetched is None:
                    st = json.loads(subprocess.run([a.dagfs, "--store", store, "stats", "--json"],
                                                   capture_output=True, check=True).stdout)
                    fetched = st["remote"]["bytes_down"]
                    # The unique bytes of the outputs: every distinct file
                    # content, and the logs.
                    seen = {}
                    for shard in os.listdir(os.path.join(store, "entries")):
                        for k in os.listdir(os.path.join(store, "entries", shard)):
                            e = json.load(open(os.path.join(store, "entries", shard, k)))
                            name = outs[e["task"]]
                            b = subprocess.run([a.dagfs, "--store", store, "cat", f"zstd/{e['task']}/{name}"],
                                               capture_output=True, check=True).stdout
                            seen[hashlib.sha256(b).hexdigest()] = len(b)
                    unique = sum(seen.values())
                if rep > 0:  # the first round warms the page cache
                    times[m].append(took)

        # A second upload of the same results.
        for shard in os.listdir(os.path.join(producer, "entries")):
            for k in os.listdir(os.path.join(producer, "entries", shard)):
                open(os.path.join(producer, "remote-queue", k), "w").close()
        p = subprocess.run([a.dagfs, "--store", producer, "remote", "flush"], capture_output=True, text=True)
        second = re.search(r"uploaded (\d+) \((\d+) blobs, (\d+) bytes sent", p.stderr)
        if p.returncode != 0 or not second:
            sys.exit("second upload failed:\n" + p.stderr)

        base = statistics.median(times["local cold"])
        print(f"zstd: {len(files)} compile tasks + 1 archive, -j2, BuildGrid 127.0.0.1 (in-memory), "
              f"{a.reps} runs each, alternated, empty store each run\n")
        print("| mode | median | min | max | vs local cold | goal |")
        print("|---|---|---|---|---|---|")
        goals = {"local cold": "baseline", "from remote": "<= 0.30x", "server down": "<= 1.05x"}
        for m, ts in times.items():
            print(f"| {m} | {statistics.median(ts):.3f} s | {min(ts):.3f} s | {max(ts):.3f} s | "
                  f"{statistics.median(ts) / base:.3f}x | {goals[m]} |")
        print(f"\nproducer: cold build + upload {t_prod:.3f} s; upload sent {up.group(1)} blobs, {up.group(2)} bytes")
        print(f"bytes fetched by a consumer: {fetched} vs unique output bytes {unique}: "
              f"{fetched / unique:.3f}x (goal <= 1.05x)")
        print(f"second upload of the same {second.group(1)} results: {second.group(2)} blobs, "
              f"{second.group(3)} bytes sent (goal 0)")
    finally:
        if proc is not None:
            os.killpg(proc.pid, 9)
            proc.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main()
