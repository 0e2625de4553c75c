#!/usr/bin/env bash
# Runs airlock's whole test suite. On a fresh Debian machine it first installs what the tests
# start for real (docker-registry, skopeo, umoci, htpasswd, openssl), and only what is missing.
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
)
missing=()
for command in "${!packages[@]}"; do
  command -v "$command" >/dev/null 2>&1 || missing+=("${packages[$command]}")
done
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

cargo test --workspace --locked "$@"
