#!/usr/bin/env python3
"""airlock's sync and copy benchmark against skopeo, on one generated corpus, in one run.

Starts Debian's `docker-registry` on loopback as source and destination, pushes a deterministic
corpus, then times, alternating which tool goes first:
  - cold sync (empty destination) and warm sync (nothing changed): `airlock sync` vs `skopeo sync`
  - one big image: `airlock copy` vs `skopeo copy` vs a plain streaming GET->PUT of the same blobs
    (curl piped into curl), the ceiling any copier can reach here.
  - the requests issue 4 allows a warm sync (a conditional HEAD per tag on each side), sent all at
    once by `curl --parallel`: the floor any client's warm sync can reach here.
Every destination is checked afterwards: each tag must carry its source digest.
Prints medians, ratios and peak RSS (from /usr/bin/time -v). Needs: docker-registry, skopeo,
curl, /usr/bin/time (Debian packages docker-registry skopeo curl time) and a release build.

  python3 bench/run.py [--rounds 3] [--profiles small-many,big-few] [--storage DIR]

The registries keep their data in the system's temporary folder unless --storage names another
(e.g. /dev/shm, to take the filesystem out of the measurement: see bench/README.md).
"""

import argparse
import atexit
import gzip
import hashlib
import http.client
import io
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.parse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET_DIR = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/airlock-target"))
AIRLOCK = os.path.join(TARGET_DIR, "release", "airlock")
CACHE = os.path.expanduser("~/.cache/airlock-bench")

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def need(tool, package):
    if shutil.which(tool) is None and not os.path.exists(tool):
        sys.exit(f"bench: `{tool}` is missing: apt-get install {package}")


# ---------------------------------------------------------------- corpus

class Blob:
    def __init__(self, path, digest, size, media_type, diff_id=None):
        self.path, self.digest, self.size, self.media_type, self.diff_id = path, digest, size, media_type, diff_id

    def descriptor(self):
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


def write_blob(data, media_type, diff_id=None):
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    path = os.path.join(CACHE, "blobs", digest[7:])
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + ".tmp", "wb") as f:
            f.write(data)
        os.replace(path + ".tmp", path)
    return Blob(path, digest, len(data), media_type, diff_id)


def layer(seed, size):
    """gzip(tar(one file of `size` pseudo-random bytes)), cached on disk by seed and size."""
    key = os.path.join(CACHE, "layers", f"{seed}-{size}.json")
    if os.path.exists(key):
        meta = json.load(open(key))
        return Blob(meta["path"], meta["digest"], meta["size"], LAYER, meta["diff_id"])
    content = random.Random(seed).randbytes(size)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo(f"data-{seed}.bin")
        info.size = size
        info.mtime = 0
        tar.addfile(info, io.BytesIO(content))
    tar_bytes = raw.getvalue()
    diff_id = "sha256:" + hashlib.sha256(tar_bytes).hexdigest()
    blob = write_blob(gzip.compress(tar_bytes, compresslevel=1, mtime=0), LAYER, diff_id)
    os.makedirs(os.path.dirname(key), exist_ok=True)
    json.dump({"path": blob.path, "digest": blob.digest, "size": blob.size, "diff_id": diff_id}, open(key, "w"))
    return blob


class Manifest:
    def __init__(self, body, media_type, blobs, children=()):
        self.body, self.media_type, self.blobs, self.children = body, media_type, blobs, list(children)
        self.digest = "sha256:" + hashlib.sha256(body).hexdigest()


def image(arch, layers):
    config = {"architecture": arch, "os": "linux", "rootfs": {"type": "layers", "diff_ids": [l.diff_id for l in layers]}}
    config = write_blob(json.dumps(config, sort_keys=True).encode(), "application/vnd.oci.image.config.v1+json")
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config.descriptor(),
                       "layers": [l.descriptor() for l in layers]}).encode()
    return Manifest(body, OCI_MANIFEST, [config] + list(layers))


def index(entries):
    manifests = []
    for img, arch in entries:
        manifests.append({"mediaType": OCI_MANIFEST, "digest": img.digest, "size": len(img.body),
                          "platform": {"os": "linux", "architecture": arch}})
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}).encode()
    return Manifest(body, OCI_INDEX, [], [img for img, _ in entries])


def corpus(profile):
    """{repository: {tag: Manifest}}"""
    repos = {}
    if profile == "small-many":
        rng = random.Random(7)
        mib = 1024 * 1024
        bases = [layer(1000 + n, rng.randint(mib, 2 * mib)) for n in range(3)]
        seed = 2000
        for r in range(10):
            tags = {}
            for t in range(4):
                def unique():
                    nonlocal seed
                    seed += 1
                    return layer(seed, rng.randint(mib, 2 * mib))
                base = bases[(r + t) % 3]
                if (r * 4 + t) % 3 == 0:
                    tags[f"1.{t}"] = index([(image("amd64", [base, unique()]), "amd64"), (image("arm64", [base, unique()]), "arm64")])
                else:
                    tags[f"1.{t}"] = image("amd64", [base, unique()])
            # One path component: skopeo sync keeps only the last one at the destination.
            repos[f"app{r}"] = tags
    elif profile == "big-few":
        for n in range(4):
            repos[f"big{n}"] = {"1.0": image("amd64", [layer(5000 + n * 3 + k, 64 * 1024 * 1024) for k in range(3)])}
    else:
        sys.exit(f"unknown profile {profile}")
    return repos


# ---------------------------------------------------------------- registries

def wait_for_port(port, what, seconds=10):
    """Returns once something accepts connections on `port`; exits naming `what` otherwise."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    sys.exit(f"{what} did not start")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


RETIRED = []


def retire(folder):
    """Frees a finished registry's disk space at once but deletes its files only when the
    benchmark ends. On ext4 without a journal (this VM's root filesystem) the inode allocator
    skips inodes freed in the last one to six minutes (`recently_deleted` in fs/ext4/ialloc.c),
    so deleting a registry's thousands of files between rounds made every later round's
    registries pay for scanning past them: the benchmark measured its own clean-up."""
    for directory, _, files in os.walk(folder):
        for name in files:
            try:
                os.truncate(os.path.join(directory, name), 0)
            except OSError:
                pass
    RETIRED.append(folder)


@atexit.register
def remove_retired():
    for folder in RETIRED:
        shutil.rmtree(folder, ignore_errors=True)


class Registry:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="airlock-bench-", dir=STORAGE)
        self.port = free_port()
        config = os.path.join(self.dir, "config.yml")
        with open(config, "w") as f:
            f.write(f"version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n"
                    f"    rootdirectory: {self.dir}/data\n  maintenance:\n    uploadpurging:\n      enabled: false\n"
                    f"http:\n  addr: 127.0.0.1:{self.port}\n  secret: bench\n")
        self.process = subprocess.Popen(["docker-registry", "serve", config], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port, "docker-registry")

    def cpu_ms(self):
        """User and system CPU the registry process has used so far, in milliseconds."""
        fields = open(f"/proc/{self.process.pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")

    @property
    def host(self):
        return f"127.0.0.1:{self.port}"

    def stop(self):
        self.process.kill()
        self.process.wait()
        retire(self.dir)

    def request(self, method, path, body=None, headers=None):
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        data = response.read()
        connection.close()
        return response, data

    def push_blob(self, blob):
        response, _ = self.request("HEAD", f"/v2/{self.repo}/blobs/{blob.digest}")
        if response.status == 200:
            return
        response, _ = self.request("POST", f"/v2/{self.repo}/blobs/uploads/")
        location = urllib.parse.urlparse(response.getheader("Location"))
        path = location.path + "?" + (location.query + "&" if location.query else "") + "digest=" + blob.digest
        with open(blob.path, "rb") as f:
            response, data = self.request("PUT", path, body=f, headers={"Content-Length": str(blob.size), "Content-Type": "application/octet-stream"})
        assert response.status == 201, (response.status, data)

    def push(self, repo, manifest, tag=None):
        self.repo = repo
        for child in manifest.children:
            self.push(repo, child)
        for blob in manifest.blobs:
            self.push_blob(blob)
        response, data = self.request("PUT", f"/v2/{repo}/manifests/{tag or manifest.digest}", body=manifest.body,
                                      headers={"Content-Type": manifest.media_type})
        assert response.status == 201, (response.status, data)

    def digest(self, repo, tag):
        response, _ = self.request("HEAD", f"/v2/{repo}/manifests/{tag}", headers={"Accept": f"{OCI_INDEX}, {OCI_MANIFEST}"})
        return response.getheader("Docker-Content-Digest") if response.status == 200 else None


# ---------------------------------------------------------------- measuring

def timed(command):
    """(seconds, peak RSS in KiB) of a command run under /usr/bin/time -v."""
    start = time.perf_counter()
    result = subprocess.run(["/usr/bin/time", "-v"] + command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"bench: {' '.join(command)} failed:\n{result.stderr[-3000:]}")
    rss = next(int(line.split(":")[1]) for line in result.stderr.splitlines() if "Maximum resident set size" in line)
    return elapsed, rss


def missing_tags(source, destination, repos, prefix):
    return [f"{repo}:{tag}" for repo, tags in repos.items() for tag in tags
            if destination.digest(f"{prefix}{repo}", tag) != source.digest(repo, tag)]


def sync_commands(tool, source, destination, repos, workdir):
    if tool == "airlock":
        lines = ["sync:"]
        for repo in repos:
            lines += [f"  - source: {source.host}/{repo}", f"    target: {destination.host}/mirror/{repo}"]
        path = os.path.join(workdir, "airlock-sync.yaml")
        open(path, "w").write("\n".join(lines) + "\n")
        return [AIRLOCK, "sync", "-q", "-f", path]
    images = "\n".join(f"    {repo}: []" for repo in repos)
    path = os.path.join(workdir, "skopeo-sync.yaml")
    open(path, "w").write(f"{source.host}:\n  tls-verify: false\n  images:\n{images}\n")
    return ["skopeo", "--policy", POLICY, "sync", "--all", "--preserve-digests", "--src", "yaml", "--dest", "docker",
            "--dest-tls-verify=false", path, f"{destination.host}/mirror"]


def bench_sync(profile, rounds, workdir):
    repos = corpus(profile)
    source = Registry()
    for repo, tags in repos.items():
        for tag, manifest in tags.items():
            source.push(repo, manifest, tag)
    n_tags = sum(len(t) for t in repos.values())
    results = {tool: {"cold": [], "warm": [], "rss": [], "registry_cpu": []} for tool in ("airlock", "skopeo", "curl")}
    left_behind = {"airlock": 0, "skopeo": 0}
    for round_idx in range(rounds):
        order = ("airlock", "skopeo") if round_idx % 2 == 0 else ("skopeo", "airlock")
        for tool in order:
            destination = Registry()
            command = sync_commands(tool, source, destination, repos, workdir)
            cold, rss_cold = timed(command)
            missing = missing_tags(source, destination, repos, "mirror/")
            if missing:
                left_behind[tool] += 1
                print(f"  {tool} cold run left {len(missing)} tag(s) behind: {missing[:3]}", file=sys.stderr)
            # The cold run's writes are flushed before the warm runs, which would otherwise share the
            # CPU with the kernel writing them back (same for both tools).
            os.sync()
            # Warm: nothing changed since the cold run; the median of three runs. The registries'
            # CPU during them bounds what any client can reach (bench/README.md, "the warm floor").
            before = source.cpu_ms() + destination.cpu_ms()
            warm_runs = [timed(command) for _ in range(3)]
            results[tool]["registry_cpu"].append((source.cpu_ms() + destination.cpu_ms() - before) / len(warm_runs))
            warm = statistics.median(t for t, _ in warm_runs)
            rss_warm = max(r for _, r in warm_runs)
            if tool == "airlock":
                results["curl"]["warm"].append(statistics.median(warm_requests_by_curl(source, destination, repos, workdir) for _ in range(3)))
            destination.stop()
            results[tool]["cold"].append(cold)
            results[tool]["warm"].append(warm)
            results[tool]["rss"].append(max(rss_cold, rss_warm))
            print(f"  round {round_idx + 1} {tool:7} cold {cold:6.2f}s warm {warm:6.3f}s rss {max(rss_cold, rss_warm) / 1024:6.1f} MiB", file=sys.stderr)
    source.stop()
    return n_tags, results, left_behind


def warm_requests_by_curl(source, destination, repos, workdir):
    """Seconds curl takes to send, all at once, the requests issue 4 allows a warm sync: a
    conditional HEAD per tag on each side (answered 304). No client that sends them can finish
    sooner on this machine. (airlock also lists each source repository's tags, one request more
    per repository: new tags and filters need the list.)"""
    accept = f"{OCI_INDEX}, {OCI_MANIFEST}"
    lines = []
    for repo, tags in repos.items():
        for tag, manifest in tags.items():
            for registry, name in ((source, repo), (destination, f"mirror/{repo}")):
                lines += [f'url = "http://{registry.host}/v2/{name}/manifests/{tag}"', "head", f'header = "Accept: {accept}"',
                          f'header = "If-None-Match: \\"{manifest.digest}\\""', 'output = "/dev/null"', "next"]
    config = os.path.join(workdir, "warm-requests.curl")
    open(config, "w").write("\n".join(lines[:-1]) + "\n")
    start = time.perf_counter()
    subprocess.run(["/usr/bin/time", "-o", os.devnull, "curl", "-sf", "--parallel", "--parallel-immediate", "--parallel-max", "32",
                    "-K", config], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def bench_big_copy(rounds, workdir):
    repos = corpus("big-few")
    source = Registry()
    repo = "big0"
    manifest = repos[repo]["1.0"]
    source.push(repo, manifest, "1.0")
    total = sum(b.size for b in manifest.blobs)
    times = {"airlock": [], "skopeo": [], "curl": []}
    rss = {"airlock": [], "skopeo": []}
    for round_idx in range(rounds):
        order = ["airlock", "skopeo", "curl"] if round_idx % 2 == 0 else ["curl", "skopeo", "airlock"]
        for tool in order:
            destination = Registry()
            if tool == "airlock":
                elapsed, peak = timed([AIRLOCK, "copy", "-q", f"{source.host}/{repo}:1.0", f"{destination.host}/{repo}:1.0"])
                rss[tool].append(peak)
            elif tool == "skopeo":
                elapsed, peak = timed(["skopeo", "--policy", POLICY, "copy", "--preserve-digests", "--src-tls-verify=false", "--dest-tls-verify=false",
                                       f"docker://{source.host}/{repo}:1.0", f"docker://{destination.host}/{repo}:1.0"])
                rss[tool].append(peak)
            else:
                elapsed = plain_get_put(source, destination, repo, manifest)
            if tool != "curl" and destination.digest(repo, "1.0") != manifest.digest:
                sys.exit(f"bench: {tool} did not copy the big image correctly")
            destination.stop()
            times[tool].append(elapsed)
            print(f"  round {round_idx + 1} {tool:7} {elapsed:6.2f}s {total / elapsed / 2**20:7.1f} MiB/s", file=sys.stderr)
    source.stop()
    return total, times, rss


def plain_get_put(source, destination, repo, manifest):
    """Each blob: POST an upload, then curl GET piped into curl PUT (streamed, chunked)."""
    start = time.perf_counter()
    for blob in manifest.blobs:
        response, _ = destination.request("POST", f"/v2/{repo}/blobs/uploads/")
        location = urllib.parse.urlparse(response.getheader("Location"))
        url = f"http://{destination.host}{location.path}?{location.query}&digest={blob.digest}"
        get = subprocess.Popen(["curl", "-sf", f"http://{source.host}/v2/{repo}/blobs/{blob.digest}"], stdout=subprocess.PIPE)
        put = subprocess.run(["curl", "-sf", "-X", "PUT", "-T", "-", "-H", "Content-Type: application/octet-stream", url],
                             stdin=get.stdout, stdout=subprocess.DEVNULL)
        get.stdout.close()
        if get.wait() != 0 or put.returncode != 0:
            sys.exit("bench: the plain GET->PUT failed")
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profiles", default="small-many,big-few")
    parser.add_argument("--no-build", action="store_true", help="use the release binary as it is")
    parser.add_argument("--storage", help="folder under which the registries keep their data (default: the system's temporary folder)")
    args = parser.parse_args()
    global STORAGE
    STORAGE = args.storage
    for tool, package in [("docker-registry", "docker-registry"), ("skopeo", "skopeo"), ("curl", "curl"), ("/usr/bin/time", "time")]:
        need(tool, package)
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--locked", "-q", "-p", "airlock"], cwd=ROOT, check=True,
                       env=dict(os.environ, CARGO_TARGET_DIR=TARGET_DIR))
    workdir = tempfile.mkdtemp(prefix="airlock-bench-work-")
    global POLICY
    POLICY = os.path.join(workdir, "policy.json")
    open(POLICY, "w").write('{"default":[{"type":"insecureAcceptAnything"}]}')

    storage = STORAGE or tempfile.gettempdir()
    filesystem = subprocess.run(["stat", "-f", "-c", "%T", storage], capture_output=True, text=True).stdout.strip()
    print(f"registry storage: {storage} ({filesystem})", file=sys.stderr)
    rows, floors = [], []
    for profile in args.profiles.split(","):
        print(f"sync, profile {profile}:", file=sys.stderr)
        n_tags, results, left_behind = bench_sync(profile, args.rounds, workdir)
        a, s = results["airlock"], results["skopeo"]
        for case, rss_pair in (("cold", (max(a["rss"]), max(s["rss"]))), ("warm", (None, None))):
            per_round = [mine / theirs for mine, theirs in zip(a[case], s[case])]
            rows.append((f"{profile} ({n_tags} tags) {case} sync", statistics.median(a[case]), statistics.median(s[case]), *rss_pair, per_round))
        per_round = [mine / theirs for mine, theirs in zip(results["curl"]["warm"], s["warm"])]
        rows.append((f"  a HEAD per tag per side by curl --parallel", statistics.median(results["curl"]["warm"]), statistics.median(s["warm"]),
                     None, None, per_round))
        # Both registries are on this machine: the CPU they need to answer airlock's warm requests,
        # spread over every core, is the least time any client's warm sync can take here.
        cores = len(os.sched_getaffinity(0))
        registry_cpu = statistics.median(a["registry_cpu"])
        floor = registry_cpu / 1000 / cores
        floors.append(f"{profile} warm sync: the two registries spend {registry_cpu:.0f} ms of CPU answering airlock "
                      f"(skopeo: {statistics.median(s['registry_cpu']):.0f} ms); on {cores} cores no client finishes under "
                      f"{floor * 1000:.0f} ms = {floor / statistics.median(s['warm']):.3f}x of skopeo's warm sync")
        if any(left_behind.values()):
            print(f"  cold runs that left a tag behind: {left_behind}", file=sys.stderr)
    print("big image copy (3 x 64 MiB layers):", file=sys.stderr)
    total, times, rss = bench_big_copy(args.rounds, workdir)
    airlock_copy, skopeo_copy, plain = (statistics.median(times[t]) for t in ("airlock", "skopeo", "curl"))
    per_round = [mine / theirs for mine, theirs in zip(times["airlock"], times["skopeo"])]
    rows.append(("big image copy", airlock_copy, skopeo_copy, max(rss["airlock"]), max(rss["skopeo"]), per_round))

    print()
    # The ratio of the medians, and the range of the rounds' own ratios (the machine is noisy).
    print(f"{'case':42} {'airlock':>9} {'skopeo':>9} {'ratio':>7} {'per round':>13} {'airlock RSS':>12} {'skopeo RSS':>11}")
    for name, mine, theirs, my_rss, their_rss, per_round in rows:
        rss_text = f"{my_rss / 1024:9.1f} MiB {their_rss / 1024:7.1f} MiB" if my_rss else ""
        spread = f"{min(per_round):.3f}-{max(per_round):.3f}x"
        print(f"{name:42} {mine:8.3f}s {theirs:8.3f}s {mine / theirs:6.3f}x {spread:>13} {rss_text}")
    print(f"{'big image: plain curl GET->PUT':42} {plain:8.2f}s  airlock reaches {plain / airlock_copy * 100:.0f}% of its throughput "
          f"({total / airlock_copy / 2**20:.0f} vs {total / plain / 2**20:.0f} MiB/s)")
    for line in floors:
        print(line)
    shutil.rmtree(workdir, ignore_errors=True)


POLICY = None
STORAGE = None

if __name__ == "__main__":
    main()
