#!/usr/bin/env bash
# Prepare the FHIR test servers (issue 3). Run by the test command before pytest.
#
#   tests/servers/setup.sh [hapi|sekmet|all]      (default: all)
#
# hapi:   builds the launcher with Maven when tests/servers/hapi/target/run/hapi-test-server.jar
#         is missing or older than pom.xml / src (`mvn -B -q -DskipTests package`; artifacts are
#         cached in ~/.m2, or in $MAVEN_REPO_LOCAL if set). Fast no-op when it is up to date.
#         The built jar is copied and renamed into target/run/, never rewritten in place, so
#         servers that are running from the previous jar are not disturbed by a rebuild.
# sekmet: checks that the sekmet-fhir package (tests extra of pyproject.toml) is importable.
#
# Needs: Java 17+ and Maven 3.8+ on PATH for hapi (when either is missing and this runs as root
# on a Debian-like machine, it installs openjdk-17-jdk-headless and maven with apt-get);
# the project venv (or $FHIR_SPINE_PYTHON) with the tests extra for sekmet.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
HAPI_DIR="$HERE/hapi"
BUILT_JAR="$HAPI_DIR/target/hapi-test-server.jar"
HAPI_JAR="$HAPI_DIR/target/run/hapi-test-server.jar"
what="${1:-all}"

log() { echo "[servers/setup] $*" >&2; }

hapi_up_to_date() {
  [[ -f "$HAPI_JAR" ]] || return 1
  # Anything under pom.xml or src newer than the jar means a rebuild.
  [[ -z "$(find "$HAPI_DIR/pom.xml" "$HAPI_DIR/src" -newer "$HAPI_JAR" -print -quit)" ]]
}

ensure_java_and_maven() {
  if command -v java >/dev/null && command -v mvn >/dev/null; then
    return 0
  fi
  if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
    log "java or mvn missing: installing openjdk-17-jdk-headless and maven with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jdk-headless maven >&2
  fi
  command -v java >/dev/null || { log "java not found on PATH (need Java 17+)"; exit 2; }
  command -v mvn >/dev/null || { log "mvn not found on PATH (need Maven 3.8+)"; exit 2; }
}

build_hapi() {
  # Runs with the build lock held; another setup.sh may have built it meanwhile.
  if hapi_up_to_date; then
    return 0
  fi
  ensure_java_and_maven
  local args=(-B -q -DskipTests)
  if [[ -n "${MAVEN_REPO_LOCAL:-}" ]]; then
    args+=("-Dmaven.repo.local=$MAVEN_REPO_LOCAL")
  fi
  log "building the HAPI FHIR test server (mvn ${args[*]} package) ..."
  local start=$SECONDS
  # (Debian's Maven 3.8 prints stray colour resets even in batch mode: drop them.)
  (cd "$HAPI_DIR" && mvn "${args[@]}" package 2>&1) | sed -e $'s/\x1b\\[0m//g' -e '/^$/d' >&2
  [[ -f "$BUILT_JAR" ]] || { log "build finished but $BUILT_JAR is missing"; exit 1; }
  mkdir -p "$(dirname "$HAPI_JAR")"
  cp "$BUILT_JAR" "$HAPI_JAR.tmp"
  mv -f "$HAPI_JAR.tmp" "$HAPI_JAR"
  log "built $HAPI_JAR in $((SECONDS - start)) s"
}

setup_hapi() {
  if hapi_up_to_date; then
    log "HAPI jar is up to date: $HAPI_JAR"
    return 0
  fi
  mkdir -p "$HAPI_DIR/target"
  if command -v flock >/dev/null; then
    # One build at a time (several sessions may start servers at once).
    (
      flock 9
      build_hapi
    ) 9> "$HAPI_DIR/target/.build.lock"
  else
    build_hapi
  fi
}

# shellcheck source=common.sh
source "$HERE/common.sh"

setup_sekmet() {
  local py
  py="$(python_bin)"
  if ! "$py" -c "import sekmet.main, uvicorn" 2>/dev/null; then
    log "sekmet-fhir is not importable by $py; install the tests extra: pip install -e '.[tests]'"
    exit 2
  fi
  log "sekmet-fhir is available to $py"
}

case "$what" in
  hapi) setup_hapi ;;
  sekmet) setup_sekmet ;;
  all) setup_hapi; setup_sekmet ;;
  *) echo "usage: $0 [hapi|sekmet|all]" >&2; exit 64 ;;
esac
