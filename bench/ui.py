#!/usr/bin/env python3
"""The web page's runs table over a large run history: 10,000 runs in the run database (written
by airlock's own schema, then filled in one transaction), `airlock serve` with `ui.gate_file`,
and the time to the last byte of `/ui/runs` pages (the first, one deep in the history, one
filtered) and of `/ui/` (imports), each asked 50 times over one loopback connection at a time.
Prints the median and the 95th percentile; the target is a page in under 200 ms. Needs a
release build (built here unless --no-build).

  python3 bench/ui.py [--runs 10000] [--no-build]
"""

import argparse
import http.client
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as common  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--no-build", action="store_true")
    args = parser.parse_args()
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--locked", "-q", "-p", "airlock"], cwd=common.ROOT, check=True,
                       env=dict(os.environ, CARGO_TARGET_DIR=common.TARGET_DIR))
    work = tempfile.mkdtemp(prefix="airlock-ui-bench-")
    root = os.path.join(work, "root")
    imports = ["node", "redis", "nginx", "alpine", "postgres"]
    gate_file = os.path.join(work, "airlock.yaml")
    with open(gate_file, "w") as f:
        f.write("imports:\n")
        for name in imports:
            f.write(f"  - name: {name}\n    source: root://{root}//upstream/{name}\n    tags: ['1']\n"
                    f"    staging: root://{root}//staging/{name}\n    target: root://{root}//base/{name}\n")
    # airlock makes the database with its schema; the runs are then written straight into it.
    subprocess.run([common.AIRLOCK, "runs", "list", "-f", gate_file], check=True, capture_output=True)
    database = sqlite3.connect(os.path.join(work, ".airlock", "runs.db"))
    rng = random.Random(7)
    statuses = ["Succeeded"] * 6 + ["Failed"] * 2 + ["Error"]
    triggers = ["Image Update", "Timer", "Manual", "Rollback", "Commit"]
    started = int(time.time()) - args.runs * 600
    with database:
        for n in range(1, args.runs + 1):
            status = rng.choice(statuses)
            digest = "sha256:" + "%064x" % rng.getrandbits(256)
            database.execute(
                "INSERT INTO runs (run_id, import, tag, platform, status, trigger, started, duration_ms, upstream_digest, promoted_digest, reason, log) "
                "VALUES (?, ?, '1', 'linux/amd64', ?, ?, ?, ?, ?, ?, ?, ?)",
                (f"bn{n}", rng.choice(imports), status, rng.choice(triggers), started + n * 600, rng.randint(200, 90_000), digest,
                 digest if status == "Succeeded" else None, None if status == "Succeeded" else "gate `policy` failed", "staging…\npromoted\n"))
    database.close()
    with open(os.path.join(work, "serve.yaml"), "w") as f:
        f.write(f"ui:\n  gate_file: {gate_file}\n")
    server = subprocess.Popen([common.AIRLOCK, "serve", "--root", root, "--listen", "127.0.0.1:0", "-f", os.path.join(work, "serve.yaml")],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    host = server.stdout.readline().strip().removeprefix("listening on http://")
    port = int(host.rsplit(":", 1)[1])
    cases = {
        "/ui/runs (page 1)": "/ui/runs",
        "/ui/runs (page 150)": "/ui/runs?page=150",
        "/ui/runs?status=Failed": "/ui/runs?status=Failed&page=3",
        "/ui/ (imports)": "/ui/",
    }
    print(f"{args.runs} runs in the database")
    print(f"{'page':28} {'median':>9} {'p95':>9} {'bytes':>8}")
    worst = 0.0
    for name, path in cases.items():
        times, size = [], 0
        for _ in range(50):
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            start = time.perf_counter()
            connection.request("GET", path)
            response = connection.getresponse()
            body = response.read()
            times.append((time.perf_counter() - start) * 1000)
            connection.close()
            assert response.status == 200, (path, response.status)
            size = len(body)
        times.sort()
        p95 = times[int(len(times) * 0.95) - 1]
        worst = max(worst, p95)
        print(f"{name:28} {statistics.median(times):7.1f}ms {p95:7.1f}ms {size:8}")
    server.kill()
    server.wait()
    print(f"worst p95 {worst:.1f} ms (target: under 200 ms)")


if __name__ == "__main__":
    main()
