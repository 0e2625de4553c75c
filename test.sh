#!/usr/bin/env bash
# Runs airlock's whole test suite. On a fresh Debian machine it first installs what the tests
# start for real (docker-registry, skopeo, umoci, htpasswd, openssl, podman, runc, a static
# busybox, git, util-linux's `script` (a pseudo-terminal), PostgreSQL's server, Chromium and its WebDriver, the oras Python SDK, moto's S3 server, the Helm engine from helm-python-sdk), and only what is missing.
set -euo pipefail
cd "$(dirname "$0")"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/airlock-target}"

# command -> Debian package
declare -A packages=(
  [docker-registry]=docker-registry
  [skopeo]=skopeo
  [umoci]=umoci
  [htpasswd]=apache2-utils
  [openssl]=openssl
  [podman]=podman
  [runc]=runc
  [git]=git
  [script]=bsdutils
  [chromium]=chromium
  [chromedriver]=chromium-driver
)
missing=()
for command in "${!packages[@]}"; do
  command -v "$command" >/dev/null 2>&1 || missing+=("${packages[$command]}")
done
# The run-history tests start a throwaway PostgreSQL cluster (initdb, pg_ctl: Debian keeps them
# under /usr/lib/postgresql/VERSION/bin, off PATH).
if ! command -v initdb >/dev/null 2>&1 && ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
  missing+=(postgresql)
fi
# The podman tests run a static busybox in their image.
if command -v dpkg >/dev/null && ! dpkg -s busybox-static >/dev/null 2>&1; then
  missing+=(busybox-static)
fi
if ((${#missing[@]})); then
  echo "test.sh: installing ${missing[*]}" >&2
  if [ "$(id -u)" = 0 ]; then sudo=(); elif command -v sudo >/dev/null; then sudo=(sudo); else sudo=(false); fi
  if ! command -v apt-get >/dev/null || [ "${sudo[*]}" = false ]; then
    echo "test.sh: please install these packages (Debian names): ${missing[*]}" >&2
    exit 1
  fi
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The suite's own summary closes the output: cargo prints one "test result" line per test binary,
# the last of which may be an empty doc-test run.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
# The ORAS SDK, for the artifact interop tests.
if ! python3 -c "import oras.client" 2>/dev/null; then
  echo "test.sh: installing the Python package oras" >&2
  python3 -m pip install -q oras 2>/dev/null \
    || python3 -m pip install -q --user --break-system-packages oras \
    || { echo "test.sh: please install the Python package oras (pip install oras)" >&2; exit 1; }
fi

# moto's S3 server, the object store of the S3 backend's tests.
if ! command -v moto_server >/dev/null 2>&1; then
  echo "test.sh: installing the Python package moto[server]" >&2
  python3 -m pip install -q "moto[server]" 2>/dev/null \
    || python3 -m pip install -q --user --break-system-packages "moto[server]" \
    || { echo "test.sh: please install the Python package moto[server] (pip install 'moto[server]')" >&2; exit 1; }
  export PATH="$HOME/.local/bin:$PATH"
fi

# The real Helm engine, behind the `helm template` stand-in of the discovery tests.
if ! python3 -c "import helm_python" 2>/dev/null; then
  echo "test.sh: installing the Python package helm-python-sdk" >&2
  python3 -m pip install -q helm-python-sdk 2>/dev/null \
    || python3 -m pip install -q --user --break-system-packages helm-python-sdk \
    || { echo "test.sh: please install the Python package helm-python-sdk (pip install helm-python-sdk)" >&2; exit 1; }
fi

cargo test --workspace --locked "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed;?$/) p += $(i-1); if ($(i) ~ /^failed;?$/) f += $(i-1) } }
     END { printf "%d passed, %d failed\n", p, f }' "$log"
exit "$status"
