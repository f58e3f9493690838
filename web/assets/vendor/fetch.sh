#!/usr/bin/env bash
# Re-fetches the vendored xterm.js from the npm registry at the pinned versions, checks
# each package against its pinned SHA-256, and writes the files the page uses (and their
# licences) here, with their SHA-256 in SHA256SUMS (which CI checks offline:
# `sha256sum --check SHA256SUMS`). `fetch.sh --check` fetches and compares without
# writing: it fails if the vendored files are not exactly those of the pinned packages.
# Needs npm (only to fetch; building and running switchboard never does).
set -euo pipefail
cd "$(dirname "$0")"

# package@version  sha256 of the registry's tarball
PACKAGES=(
  "@xterm/xterm@6.0.0 908e66e04af6c8dc6b00dd3b54de088e2e81e5ed866284fd6c2fb3c2d1c7a3f6"
  "@xterm/addon-fit@0.11.0 26003b4517a132b64e4ff228fd88a5fda3fff5e606c76093f6dcff772e9ecec0"
)
# file in the package -> file here
FILES=(
  "xterm-xterm-6.0.0.tgz package/lib/xterm.js xterm.js"
  "xterm-xterm-6.0.0.tgz package/css/xterm.css xterm.css"
  "xterm-xterm-6.0.0.tgz package/LICENSE LICENSE.xterm"
  "xterm-addon-fit-0.11.0.tgz package/lib/addon-fit.js addon-fit.js"
  "xterm-addon-fit-0.11.0.tgz package/LICENSE LICENSE.addon-fit"
)

check=false
[[ "${1:-}" == "--check" ]] && check=true
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

for entry in "${PACKAGES[@]}"; do
  read -r spec sum <<<"$entry"
  tarball=$(cd "$work" && npm pack --silent "$spec")
  echo "$sum  $work/$tarball" | sha256sum --check --quiet \
    || { echo "fetch.sh: $spec: the tarball's SHA-256 is not the pinned one" >&2; exit 1; }
done

status=0
for entry in "${FILES[@]}"; do
  read -r tarball inner here <<<"$entry"
  tar -xzf "$work/$tarball" -C "$work" "$inner"
  if $check; then
    cmp -s "$work/$inner" "$here" || { echo "fetch.sh: $here differs from $inner of $tarball" >&2; status=1; }
  else
    cp "$work/$inner" "$here"
  fi
  rm -rf "$work/package"
done
if $check; then
  [[ $status == 0 ]] && echo "fetch.sh: the vendored files are those of the pinned packages"
else
  sha256sum xterm.js xterm.css addon-fit.js LICENSE.xterm LICENSE.addon-fit > SHA256SUMS
fi
exit $status
