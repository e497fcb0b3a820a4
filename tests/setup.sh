#!/usr/bin/env bash
# Everything the test suite needs besides Python packages, installed by the project itself
# so that a fresh machine (CI) passes: each step is idempotent and quick when done before.
set -euo pipefail
cd "$(dirname "$0")/.."

# R (Debian's r-base-core): the statistics tests compare our results with R's own.
if ! command -v Rscript >/dev/null 2>&1; then
  echo "setup: installing r-base-core" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends r-base-core >/dev/null
fi

# The HAPI FHIR JPA test server (Maven build) and the second server.
bash tests/servers/setup.sh

# The official FHIR R4 examples (npm package) for the bad-input run, when present, and the
# mCODE STU4 package (its examples: real-world oncology shapes).
if [ -f tests/data/setup_examples.sh ]; then
  bash tests/data/setup_examples.sh
  bash tests/data/setup_examples.sh hl7.fhir.us.mcode 4.0.0
fi
