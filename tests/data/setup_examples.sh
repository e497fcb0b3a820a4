#!/usr/bin/env bash
# Install the official FHIR R4 examples (npm package hl7.fhir.r4.examples 4.0.1, CC0) for
# tests/test_official_examples.py, into tests/.cache/npm (git-ignored). Idempotent: when the
# package is already there at the right version it only prints where the examples are.
# Prints one line: the folder holding the example JSON files.
set -euo pipefail

PACKAGE=hl7.fhir.r4.examples
VERSION=4.0.1
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"   # tests/
prefix="$here/.cache/npm"
pkg_dir="$prefix/node_modules/$PACKAGE"
examples="$pkg_dir"

installed_version() {
  [ -f "$pkg_dir/package.json" ] || return 0
  sed -n 's/^[[:space:]]*"version"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p' \
    "$pkg_dir/package.json" | head -n 1
}

if [ "$(installed_version)" != "$VERSION" ] || [ ! -d "$examples" ]; then
  if ! command -v npm >/dev/null 2>&1; then
    echo "setup_examples.sh: npm not found; cannot install $PACKAGE@$VERSION" >&2
    exit 1
  fi
  mkdir -p "$prefix"
  echo "setup_examples.sh: installing $PACKAGE@$VERSION into $prefix" >&2
  npm install --no-save --no-audit --no-fund --loglevel=error --prefix "$prefix" \
    "$PACKAGE@$VERSION" >&2
fi

if [ ! -d "$examples" ]; then
  echo "setup_examples.sh: $PACKAGE@$VERSION installed but $examples is missing" >&2
  exit 1
fi
echo "$examples"
