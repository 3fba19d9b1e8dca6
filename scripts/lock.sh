#!/usr/bin/env bash
# Compiles requirements.in and requirements-dev.in into hash-pinned locks (`make lock`), or,
# with --check, fails if a committed lock no longer matches its input (`make lock-check`, run
# by CI). $UV is the pinned uv from requirements-tools.txt; $UPGRADE, if set, names packages
# (NAME or NAME==X.Y, space-separated) that `make lock` may move, transitive ones included.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${UV:?UV must name the uv binary (run through make lock / make lock-check)}"
upgrade=()
for package in ${UPGRADE:-}; do upgrade+=(--upgrade-package "$package"); done

# One target for every machine that installs the locks (developers, CI, the python:3.11
# image): markers kept so a package needed only on some 3.11.x stays optional. The existing
# lock is the resolver's preference, so a compile moves only what an input changed.
# --no-config: no uv.toml of this machine leaks into the lock.
compile() { # input output
  "$UV" pip compile --no-config --quiet --generate-hashes --no-strip-markers \
    --python-version 3.11 --python-platform linux \
    --custom-compile-command "make lock" "${upgrade[@]}" -o "$2" "$1"
}

failed() {
  cat >&2 <<MSG
lock: uv could not compile $1 (its message is above). A resolution error means the input
asks for something impossible; a network error means the package index (PyPI) was not
reached: this step needs it, and CI has it.
MSG
  exit 1
}

if [[ ${1:-} != --check ]]; then
  compile requirements.in requirements.txt || failed requirements.in
  compile requirements-dev.in requirements-dev.txt || failed requirements-dev.in
  exit 0
fi

[[ -z ${UPGRADE:-} ]] || { echo "lock-check: UPGRADE applies to make lock only." >&2; exit 2; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
stale=0
for name in requirements requirements-dev; do
  cp "$name.txt" "$tmp/$name.txt"
  compile "$name.in" "$tmp/$name.txt" || failed "$name.in"
  # Pins, markers and annotations must match. Hash lines are left out: PyPI may add a wheel
  # to a release already pinned, which changes no input and breaks no install.
  if ! diff -u <(grep -v -- '--hash=' "$name.txt") <(grep -v -- '--hash=' "$tmp/$name.txt") \
    --label "$name.txt (committed)" --label "$name.txt (from $name.in)" >&2; then
    stale=1
  fi
done
if ((stale)); then
  echo "lock-check: a lock is out of date with its input; run \`make lock\` and commit both." >&2
  exit 1
fi
echo "lock-check: requirements.txt and requirements-dev.txt match their inputs."
