#!/usr/bin/env python3
"""Soak test of a dagfs mount; run it through scripts/soak.

Builds one output with a real pipeline in a fresh store under WORKDIR:

  data/   300 files of 0-256 KiB random bytes (log-uniform sizes) and
          4 files of 1, 2, 4 and 8 MiB (big0..big3)

mounts the store with `dagfs mount` (its default options) and, for SECONDS,
runs at the same time:

  stress-ng --fstat 2 --fstat-dir MNT/dags/soak/files/data
            (stat, lstat and statx of each entry, over and over, and calls
            with bad arguments it expects to fail; strace shows no open of
            anything in the mount but the directory, O_RDONLY)
  fio --readonly --rw=randread --numjobs=4 --bs=4k --direct=0 over the four
      big files (one colon-separated --filename), --group_reporting; fio's
      default --invalidate=1 drops the files' page cache at every pass over
      them, so most of its reads reach the daemon (the `read` requests)

sampling the daemon's VmRSS once a second. Then it prints each tool's
operations and errors, the FUSE requests the daemon served (/.dagfs/stats),
and VmRSS/VmHWM before (mounted, nothing read) and after (the tools done),
and fails (exit 1) when:

  - stress-ng exits nonzero or reports a failed stressor (NB: its fstat
    stressor counts a failed stat as an op and does not fail on it: with the
    daemon killed mid-run it still says "successful run"; the daemon checks
    below are what catch that),
  - fio exits nonzero or reports an error,
  - the daemon is gone, the mount no longer answers, or /.dagfs/stats counts
    an EIO or a panic,
  - VmRSS after exceeds VmRSS before by more than --rss-bound-mib.

Needs root and /dev/fuse. Everything lives under WORKDIR, which the wrapper
removes; the mount is unmounted on the way out.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import time

MIB = 1 << 20

GEN = r'''
import os, random, sys
out = os.path.join(sys.argv[1], "data")
os.makedirs(out)
rnd = random.Random(7)
for i in range(300):
    # log-uniform 1 B .. 256 KiB, a few empty
    n = 0 if i % 50 == 0 else int(2 ** rnd.uniform(0, 18))
    with open(os.path.join(out, "f%03d" % i), "wb") as f:
        f.write(rnd.randbytes(n))
for i, mib in enumerate([1, 2, 4, 8]):
    with open(os.path.join(out, "big%d" % i), "wb") as f:
        f.write(rnd.randbytes(mib << 20))
'''


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def status(pid, field):
    """A /proc/PID/status field in bytes, or None when the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except FileNotFoundError:
        return None
    return None


def mib(n):
    return "gone" if n is None else f"{n / MIB:.1f} MiB"


class Daemon:
    """One `dagfs mount` of a store; unmounts on close."""

    def __init__(self, dagfs, store, mnt):
        self.dagfs, self.mnt = dagfs, mnt
        os.makedirs(mnt, exist_ok=True)
        r = subprocess.run([dagfs, "--store", store, "mount", mnt],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"dagfs mount failed: {r.stderr}")
        m = re.search(r"daemon pid (\d+)", r.stderr)
        if not m:
            raise RuntimeError(f"no daemon pid in: {r.stderr}")
        self.pid = int(m.group(1))

    def alive(self):
        return os.path.exists(f"/proc/{self.pid}")

    def stats(self):
        """/.dagfs/stats as {name: rest of line}, or None if unreadable."""
        # NB: read by a process of its own: a generated file is one
        # snapshot per reading process for a few ms (see src/fs/unopened.rs).
        r = subprocess.run(["cat", os.path.join(self.mnt, ".dagfs/stats")],
                           capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            return None
        out = {}
        for line in r.stdout.splitlines():
            m = re.match(r"(fs \w+)\s+(.*)$", line)
            if m:
                out[m.group(1)] = m.group(2)
        return out

    def mounted(self):
        # NB: not os.path.ismount: a dead daemon's mount fails stat (ENOTCONN).
        esc = self.mnt.replace("\\", "\\134").replace(" ", "\\040").replace("\t", "\\011")
        with open("/proc/self/mountinfo") as f:
            return any(line.split(" ")[4] == esc for line in f)

    def close(self):
        if self.mounted():
            r = subprocess.run([self.dagfs, "umount", self.mnt], capture_output=True, text=True)
            if r.returncode != 0 and self.mounted():
                subprocess.run(["umount", "-l", self.mnt])
        for _ in range(500):
            if not self.alive():
                break
            time.sleep(0.01)


def requests(stats):
    m = stats and stats.get("fs ops")
    return sum(int(v) for v in re.findall(r"(\d+)", m)) if m else 0


def build(dagfs, work):
    pipe = os.path.join(work, "pipeline")
    os.makedirs(pipe)
    with open(os.path.join(pipe, "gen.py"), "w") as f:
        f.write(GEN)
    with open(os.path.join(pipe, "dagfs.toml"), "w") as f:
        f.write('name = "soak"\n\n[tasks.files]\nrun = \'python3 gen.py "$DAGFS_OUT"\'\n')
    store = os.path.join(work, "store")
    subprocess.run([dagfs, "--store", store, "run"], cwd=pipe, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return store


def stress_ng_result(rc, out_path, yaml_path):
    """(bogo ops, failures as text) from stress-ng's output and --yaml."""
    text = open(out_path, errors="replace").read()
    ops = None
    try:
        y = open(yaml_path).read()
        m = re.search(r"stressor:\s*fstat\s*\n(?:\s+[\w-]+:.*\n)*?\s+bogo-ops:\s*(\d+)", y)
        ops = int(m.group(1)) if m else None
    except FileNotFoundError:
        pass
    problems = []
    if rc != 0:
        problems.append(f"stress-ng exited {rc}")
    m = re.search(r"failed:\s*(\d+)", text)
    if m and int(m.group(1)) != 0:
        problems.append(f"stress-ng: {m.group(1)} stressor(s) failed")
    if ops is None:
        problems.append("stress-ng reported no fstat bogo ops")
    return ops, text, problems


def fio_result(rc, out_path, err_path):
    problems = []
    if rc != 0:
        err = [l for l in open(err_path, errors="replace").read().splitlines() if l.strip()]
        problems.append(f"fio exited {rc}" + (f": {err[-1]}" if err else ""))
    try:
        j = json.load(open(out_path))["jobs"][0]
    except (FileNotFoundError, ValueError, KeyError, IndexError) as e:
        problems.append(f"no fio JSON result ({e})")
        return None, problems
    if j.get("error", 0) != 0:
        problems.append(f"fio job error {j['error']} ({os.strerror(j['error'])})")
    if j.get("total_err", 0) != 0:
        problems.append(f"fio counted {j['total_err']} I/O errors")
    if j["read"]["total_ios"] == 0:
        problems.append("fio did no reads")
    return j, problems


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dagfs", required=True)
    p.add_argument("--workdir", required=True)
    p.add_argument("--rss-bound-mib", type=int, default=64)
    p.add_argument("seconds", nargs="?", type=int, default=60)
    a = p.parse_args()
    sys.stdout.reconfigure(line_buffering=True)
    if a.seconds < 1:
        p.error("SECONDS must be at least 1")
    work = a.workdir

    log("soak: building the output (300 files of 0-256 KiB, 4 of 1-8 MiB) ...")
    store = build(a.dagfs, work)
    mnt = os.path.join(work, "mnt")
    d = Daemon(a.dagfs, store, mnt)
    problems = []
    try:
        data = os.path.join(mnt, "dags/soak/files/data")
        entries = sorted(os.listdir(data))
        bigs = [os.path.join(data, n) for n in entries if n.startswith("big")]
        if len(bigs) != 4 or len(entries) != 304:
            raise RuntimeError(f"unexpected output in {data}: {len(entries)} entries")
        stats0 = d.stats()
        rss0, hwm0 = status(d.pid, "VmRSS"), status(d.pid, "VmHWM")
        log(f"soak: daemon pid {d.pid}, {len(entries)} files mounted; "
            f"running stress-ng and fio for {a.seconds} s ...")

        sng_out, sng_yaml = os.path.join(work, "stress-ng.out"), os.path.join(work, "stress-ng.yaml")
        fio_out, fio_err = os.path.join(work, "fio.json"), os.path.join(work, "fio.err")
        with open(sng_out, "w") as so, open(fio_err, "w") as fe:
            sng = subprocess.Popen(
                ["stress-ng", "--fstat", "2", "--fstat-dir", data, "-t", str(a.seconds),
                 "--metrics-brief", "--yaml", sng_yaml],
                cwd=work, stdout=so, stderr=subprocess.STDOUT)
            fio = subprocess.Popen(
                ["fio", "--readonly", "--rw=randread", "--numjobs=4", "--bs=4k",
                 "--direct=0", "--time_based", f"--runtime={a.seconds}",
                 "--filename=" + ":".join(bigs), "--name=soak", "--group_reporting",
                 "--output-format=json", f"--output={fio_out}"],
                cwd=work, stdout=subprocess.DEVNULL, stderr=fe)
            deadline = time.monotonic() + a.seconds + 120
            peak, died_at = rss0, None
            start = time.monotonic()
            while sng.poll() is None or fio.poll() is None:
                r = status(d.pid, "VmRSS")
                if r is None and died_at is None:
                    died_at = time.monotonic() - start
                peak = max(peak, r or 0)
                if time.monotonic() > deadline:
                    for t in (sng, fio):
                        if t.poll() is None:
                            t.kill()
                    problems.append(f"the tools were still running {a.seconds + 120} s later")
                    break
                time.sleep(1)
            sng.wait()
            fio.wait()

        rss1, hwm1 = status(d.pid, "VmRSS"), status(d.pid, "VmHWM")
        alive = d.alive()
        stats1 = d.stats() if alive else None

        ops, sng_text, pr = stress_ng_result(sng.returncode, sng_out, sng_yaml)
        problems += pr
        job, pr = fio_result(fio.returncode, fio_out, fio_err)
        problems += pr

        print(f"soak: {a.seconds} s, stress-ng --fstat 2 and fio randread 4k x4, "
              f"against {len(entries)} files through a dagfs mount")
        print("stress-ng:")
        for line in sng_text.splitlines():
            print("  " + line.strip())
        print(f"  fstat bogo ops {ops}, exit {sng.returncode}")
        if job:
            rd = job["read"]
            print(f"fio: {rd['total_ios']} reads ({rd['io_bytes'] / MIB:.0f} MiB), "
                  f"{rd['iops']:.0f} IOPS, {rd['bw'] / 1024:.1f} MiB/s, "
                  f"mean latency {rd['clat_ns']['mean'] / 1000:.1f} us, "
                  f"error {job.get('error', 0)}, exit {fio.returncode}")
        if stats1:
            print(f"daemon: {requests(stats1) - requests(stats0)} FUSE requests served "
                  f"({stats1.get('fs ops')})")
            print(f"        {stats1.get('fs errors')}; {stats1.get('fs handles')}; "
                  f"{stats1.get('fs inodes')}")
            m = re.match(r"(\d+) EIO, (\d+) panics", stats1.get("fs errors", ""))
            if not m:
                problems.append("no `fs errors` line in /.dagfs/stats")
            elif m.group(1) != "0" or m.group(2) != "0":
                problems.append(f"the daemon counted {stats1['fs errors']}")
        elif alive:
            problems.append("the mount no longer answers (/.dagfs/stats unreadable)")
        if not alive:
            when = f" after {died_at:.0f} s" if died_at is not None else ""
            problems.append(f"the daemon (pid {d.pid}) died{when}")
        bound = a.rss_bound_mib * MIB
        print(f"daemon VmRSS: before {mib(rss0)}, after {mib(rss1)}, peak sampled {mib(peak)} "
              f"(bound: growth <= {a.rss_bound_mib} MiB)")
        print(f"daemon VmHWM: before {mib(hwm0)}, after {mib(hwm1)}")
        if rss1 is not None and rss1 - rss0 > bound:
            problems.append(f"VmRSS grew by {(rss1 - rss0) / MIB:.1f} MiB "
                            f"(bound {a.rss_bound_mib} MiB)")
    finally:
        d.close()
    if problems:
        for pr in problems:
            print(f"soak: FAIL: {pr}")
        sys.exit(1)
    print("soak: PASS")


if __name__ == "__main__":
    main()
