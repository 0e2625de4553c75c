#!/usr/bin/env python3
"""`airlock serve` against Debian's docker-registry, side by side, in one run.

Both serve the same content (pushed by the same client, skopeo). wrk (2 threads, 32
connections) then measures requests/s of a manifest GET and a 1 MiB blob GET on each, and ab
(32 connections, keep-alive) a blob HEAD. Pushes of the corpus are timed on each: by skopeo, one
`skopeo copy` per image (its start-up included, as a user sees it), and by 4 concurrent HTTP
clients (HEAD, POST, PUT per blob, then the manifest: the server's own throughput); peak RSS comes from
/proc (VmHWM). Needs docker-registry, skopeo, wrk and a release build (Debian packages
docker-registry skopeo wrk apache2-utils).

  python3 bench/serve.py [--seconds 5] [--s3]

With `--s3` both keep their content in moto's S3 server (PyPI `moto[server]`): airlock with
`--storage s3://…`, docker-registry with its `s3` storage driver on the same server.
"""

import argparse
import concurrent.futures
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as common  # noqa: E402  (the sync benchmark's corpus and registry helpers)


class Endpoint(common.Registry):
    """The HTTP helpers of `run.Registry` for a server started elsewhere."""

    def __init__(self, host):
        self.port = int(host.rsplit(":", 1)[1])


class Moto:
    """moto's S3 server on a free loopback port, with one bucket per server under test."""

    def __init__(self):
        common.need("moto_server", "moto[server] (pip)")
        self.port = common.free_port()
        self.process = subprocess.Popen(["moto_server", "-H", "127.0.0.1", "-p", str(self.port)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        common.wait_for_port(self.port, "moto_server", seconds=15)
        for bucket in ("airlock-bench", "distribution-bench"):
            urllib.request.urlopen(urllib.request.Request(f"{self.endpoint}/{bucket}", method="PUT"))

    @property
    def endpoint(self):
        return f"http://127.0.0.1:{self.port}"

    def env(self):
        env = dict(os.environ, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_REGION="us-east-1",
                   AWS_ENDPOINT_URL=self.endpoint, AWS_ALLOW_HTTP="true")
        # docker-registry panics at start ("unable to load custom CA bundle") with it set.
        env.pop("AWS_CA_BUNDLE", None)
        return env

    def stop(self):
        self.process.kill()
        self.process.wait()


class S3Registry(common.Registry):
    """docker-registry with its `s3` storage driver on moto."""

    def __init__(self, moto):
        self.dir = tempfile.mkdtemp(prefix="airlock-bench-")
        self.port = common.free_port()
        config = os.path.join(self.dir, "config.yml")
        with open(config, "w") as f:
            f.write(f"version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  s3:\n"
                    f"    regionendpoint: {moto.endpoint}\n    bucket: distribution-bench\n    region: us-east-1\n"
                    f"    accesskey: bench\n    secretkey: bench\n    secure: false\n    v4auth: true\n"
                    f"  maintenance:\n    uploadpurging:\n      enabled: false\n"
                    f"http:\n  addr: 127.0.0.1:{self.port}\n  secret: bench\n")
        self.process = subprocess.Popen(["docker-registry", "serve", config], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        env=moto.env())
        common.wait_for_port(self.port, "docker-registry on S3")


class Served:
    def __init__(self, moto=None):
        self.dir = tempfile.mkdtemp(prefix="airlock-serve-bench-")
        command = [common.AIRLOCK, "serve", "--root", self.dir, "--listen", "127.0.0.1:0"]
        if moto:
            command += ["--storage", "s3://airlock-bench/registry"]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                        env=moto.env() if moto else None)
        line = self.process.stdout.readline().strip()
        self.host = line.removeprefix("listening on http://")

    def stop(self):
        self.process.kill()
        self.process.wait()


def push_over_http(host, repos, prefix, clients=4):
    """Pushes every image of `repos` to fresh repositories (`PREFIX-REPO`) with `clients`
    concurrent HTTP clients, each blob as HEAD, POST, PUT (what skopeo sends for a new blob),
    then the manifest: the server's push throughput without a client's start-up in it.
    Returns the seconds it took."""
    jobs = [(f"{prefix}-{repo}", tag, manifest) for repo, tags in repos.items() for tag, manifest in tags.items()]

    def push(job):
        repo, tag, manifest = job
        Endpoint(host).push(repo, manifest, tag)

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        list(pool.map(push, jobs))
    return time.perf_counter() - start


def peak_rss_mib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def wrk(url, seconds, method="GET", headers=()):
    script = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
    script.write(f'wrk.method = "{method}"\n')
    for name, value in headers:
        script.write(f'wrk.headers["{name}"] = "{value}"\n')
    script.close()
    out = subprocess.run(["wrk", "-t2", "-c32", f"-d{seconds}s", "-s", script.name, url], capture_output=True, text=True, check=True).stdout
    os.unlink(script.name)
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


def ab_head(url, seconds):
    """HEAD requests/s with ab (wrk waits for a body after a HEAD that declares a length)."""
    out = subprocess.run(["ab", "-q", "-k", "-i", "-c", "32", "-t", str(seconds), "-n", "10000000", url],
                         capture_output=True, text=True, check=True).stdout
    return float(re.search(r"Requests per second:\s+([\d.]+)", out).group(1))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--no-build", action="store_true")
    parser.add_argument("--s3", action="store_true", help="both servers on moto's S3 server")
    args = parser.parse_args()
    for tool, package in [("docker-registry", "docker-registry"), ("skopeo", "skopeo"), ("wrk", "wrk"), ("ab", "apache2-utils")]:
        common.need(tool, package)
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--locked", "-q", "-p", "airlock"], cwd=common.ROOT, check=True,
                       env=dict(os.environ, CARGO_TARGET_DIR=common.TARGET_DIR))
    work = tempfile.mkdtemp(prefix="airlock-serve-bench-work-")
    policy = os.path.join(work, "policy.json")
    open(policy, "w").write('{"default":[{"type":"insecureAcceptAnything"}]}')

    # The corpus as an OCI layout, pushed to each server by skopeo.
    repos = common.corpus("small-many")
    source = common.Registry()
    for repo, tags in repos.items():
        for tag, manifest in tags.items():
            source.push(repo, manifest, tag)
    layout = os.path.join(work, "layout")
    images = [(repo, tag) for repo, tags in repos.items() for tag in tags]
    for repo, tag in images:
        subprocess.run(["skopeo", "--policy", policy, "copy", "-q", "--all", "--preserve-digests", "--src-tls-verify=false",
                        f"docker://{source.host}/{repo}:{tag}", f"oci:{layout}:{repo}-{tag}"], check=True)
    source.stop()
    mib = common.write_blob(bytes(1024 * 1024), "application/octet-stream")

    moto = Moto() if args.s3 else None
    distribution, airlock = (S3Registry(moto), Served(moto)) if moto else (common.Registry(), Served())
    servers = {"docker-registry": (distribution.host, distribution.process.pid), "airlock serve": (airlock.host, airlock.process.pid)}
    push_seconds, http_push_seconds = {}, {}
    for name, (host, _) in servers.items():
        start = time.perf_counter()
        for repo, tag in images:
            subprocess.run(["skopeo", "--policy", policy, "copy", "-q", "--all", "--preserve-digests", "--dest-tls-verify=false",
                            f"oci:{layout}:{repo}-{tag}", f"docker://{host}/{repo}:{tag}"], check=True)
        push_seconds[name] = time.perf_counter() - start
        http_push_seconds[name] = push_over_http(host, repos, "http")
        endpoint = Endpoint(host)
        endpoint.repo = "app0"
        endpoint.push_blob(mib)

    repo, tag = images[1]
    manifest_digest = distribution.digest(repo, tag)
    accept = [("Accept", f"{common.OCI_MANIFEST}, {common.OCI_INDEX}")]
    results = {}
    for name, (host, pid) in servers.items():
        base = f"http://{host}/v2"
        results[name] = {
            "manifest GET": wrk(f"{base}/{repo}/manifests/{tag}", args.seconds, headers=accept),
            "blob HEAD": ab_head(f"{base}/app0/blobs/{mib.digest}", args.seconds),
            "1 MiB blob GET": wrk(f"{base}/app0/blobs/{mib.digest}", args.seconds),
            "rss": peak_rss_mib(pid),
        }
        assert Endpoint(host).digest(repo, tag) == manifest_digest, f"{name} serves another digest"
    distribution.stop()
    airlock.stop()
    if moto:
        moto.stop()

    mine, theirs = results["airlock serve"], results["docker-registry"]
    print(f"storage: {'S3 (moto)' if args.s3 else 'a folder'}")
    print(f"{'case':18} {'airlock serve':>14} {'docker-registry':>16} {'ratio':>7}")
    for case in ("manifest GET", "blob HEAD", "1 MiB blob GET"):
        print(f"{case:18} {mine[case]:11.0f} r/s {theirs[case]:12.0f} r/s {mine[case] / theirs[case]:6.2f}x")
    print(f"{'push corpus':18} {push_seconds['airlock serve']:12.2f} s {push_seconds['docker-registry']:14.2f} s "
          f"{push_seconds['docker-registry'] / push_seconds['airlock serve']:6.2f}x throughput")
    print(f"{'push, 4 clients':18} {http_push_seconds['airlock serve']:12.2f} s {http_push_seconds['docker-registry']:14.2f} s "
          f"{http_push_seconds['docker-registry'] / http_push_seconds['airlock serve']:6.2f}x throughput")
    print(f"{'peak RSS':18} {mine['rss']:10.1f} MiB {theirs['rss']:12.1f} MiB")


if __name__ == "__main__":
    main()
