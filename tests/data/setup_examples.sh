#!/usr/bin/env bash
# Install a FHIR npm package of example resources into tests/.cache/npm (git-ignored):
#   setup_examples.sh                             the official FHIR R4 examples (npm package
#                                                 hl7.fhir.r4.examples 4.0.1, CC0), for
#                                                 tests/test_official_examples.py
#   setup_examples.sh hl7.fhir.us.mcode 4.0.0     mCODE STU4 (CC0), for tests/test_mcode_examples.py
# Idempotent: when the package is already there at the right version it only prints where
# it is. Prints one line: the package folder.
set -euo pipefail

PACKAGE=${1:-hl7.fhir.r4.examples}
VERSION=${2:-4.0.1}
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
  if [ "$PACKAGE" = hl7.fhir.r4.examples ]; then
    npm install --no-save --no-audit --no-fund --loglevel=error --prefix "$prefix" \
      "$PACKAGE@$VERSION" >&2
  else
    # IG packages depend on hl7.fhir.r4.core, which npmjs does not carry: fetch the
    # package's own tarball only (`npm pack`) and unpack it where `npm install` would.
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    (cd "$tmp" && npm pack --silent --loglevel=error "$PACKAGE@$VERSION" >/dev/null)
    rm -rf "$pkg_dir" && mkdir -p "$pkg_dir"
    tar -xzf "$tmp"/*.tgz -C "$pkg_dir" --strip-components=1
  fi
fi

if [ ! -d "$examples" ]; then
  echo "setup_examples.sh: $PACKAGE@$VERSION installed but $examples is missing" >&2
  exit 1
fi
echo "$examples"
