"""The ORAS Python SDK (PyPI `oras`) as a tiny command line for the integration tests.

  python3 oras_client.py push HOST/REPO:TAG FILE [KEY=VALUE annotation]...
  python3 oras_client.py pull HOST/REPO:TAG OUTDIR
Prints one JSON line: {"digest": ...} for push, {"files": [...]} for pull.
"""
import json
import os
import sys

import oras.client


def main():
    action, target = sys.argv[1], sys.argv[2]
    host = target.split("/", 1)[0]
    client = oras.client.OrasClient(hostname=host, insecure=True)
    if action == "push":
        path = sys.argv[3]
        annotations = dict(arg.split("=", 1) for arg in sys.argv[4:])
        os.chdir(os.path.dirname(os.path.abspath(path)))
        response = client.push(files=[os.path.basename(path)], target=target, manifest_annotations=annotations or None)
        if response.status_code != 201:
            sys.exit(f"push answered {response.status_code}: {response.text}")
        print(json.dumps({"digest": response.headers.get("Docker-Content-Digest")}))
    elif action == "pull":
        files = client.pull(target=target, outdir=sys.argv[3])
        print(json.dumps({"files": files}))
    else:
        sys.exit(f"unknown action {action}")


main()
