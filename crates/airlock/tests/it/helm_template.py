#!/usr/bin/env python3
"""A stand-in for `helm template`, kept under tests: it renders with the real Helm engine
(Helm's Go SDK, bundled by the PyPI package helm-python-sdk) and prints what `helm template`
prints: each rendered manifest as a YAML document headed `# Source: <template>`.

Only what airlock calls is understood: `template NAME CHART [-f VALUES]... [--set K=V]...`.
"""
import sys

import helm_python as helm


def merge(base, over):
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = value
    return base


def main(argv):
    if len(argv) < 3 or argv[0] != "template":
        print("usage: helm template NAME CHART [-f VALUES]... [--set K=V]...", file=sys.stderr)
        return 2
    name, chart_path, rest = argv[1], argv[2], argv[3:]
    values = {}
    i = 0
    while i < len(rest):
        flag = rest[i]
        if flag in ("-f", "--values") and i + 1 < len(rest):
            with open(rest[i + 1], encoding="utf-8") as f:
                merge(values, helm.values_from_yaml(f.read()) or {})
            i += 2
        elif flag == "--set" and i + 1 < len(rest):
            merge(values, helm.parse_set_string(rest[i + 1]))
            i += 2
        else:
            print(f"Error: unknown flag {flag}", file=sys.stderr)
            return 1
    try:
        with helm.Chart.load(chart_path) as chart:
            rendered = chart.render(values, name=name, namespace="default")
    except helm.HelmError as error:
        print(f"Error: {error}", file=sys.stderr)
        return 1
    for source in sorted(rendered):
        text = rendered[source]
        if source.endswith("NOTES.txt") or not text.strip():
            continue
        print(f"---\n# Source: {source}\n{text.strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
