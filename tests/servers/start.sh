#!/usr/bin/env bash
# Start one FHIR test server on 127.0.0.1 and keep it running until this script is killed.
#
#   tests/servers/start.sh hapi|sekmet
#
# Builds what is needed first (setup.sh), starts the server on a free loopback port with an
# empty database, waits until GET [base]/metadata answers 200, then prints the base URL
# (e.g. http://127.0.0.1:41234/fhir) as the only line on stdout. The server's own output goes
# to stderr. SIGTERM/SIGINT stop the server cleanly (and remove its temporary data).
#
# Environment:
#   HAPI_JAVA_OPTS         JVM options for HAPI   (default: -Xms256m -Xmx1536m -XX:+UseParallelGC ...)
#   HAPI_ARGS              extra --name=value options for the HAPI launcher (see README)
#   FHIR_SPINE_PYTHON      Python that has sekmet-fhir installed (default: .venv/bin/python)
#   SERVER_START_TIMEOUT   seconds to wait for /metadata (default: 600 for hapi, 60 for sekmet)
#   FHIR_SPINE_STOP_WITH_PID  stop the server when the process with this id is gone (the pytest
#                          fixtures set it to pytest's own id, so a killed test run leaves no server)
# The whole script is one function that bash reads completely before running it, so editing
# this file while servers are running does not break them.
main() {
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
kind="${1:-}"
HOST=127.0.0.1   # loopback only, never another address

log() { echo "[servers/start $kind] $*" >&2; }

case "$kind" in
  hapi|sekmet) ;;
  *) echo "usage: $0 hapi|sekmet" >&2; exit 64 ;;
esac

# shellcheck source=common.sh
source "$HERE/common.sh"

free_port() {
  "$(python_bin)" -c 'import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

watched_pid="${FHIR_SPINE_STOP_WITH_PID:-}"
owner_gone() {
  [[ -n "$watched_pid" ]] && ! kill -0 "$watched_pid" 2>/dev/null
}

metadata_ok() {
  if command -v curl >/dev/null; then
    curl -sf -o /dev/null --max-time 10 -H 'Accept: application/fhir+json' "$1/metadata"
  else
    "$(python_bin)" -c 'import sys, urllib.request
req = urllib.request.Request(sys.argv[1] + "/metadata", headers={"Accept": "application/fhir+json"})
try:
    sys.exit(0 if urllib.request.urlopen(req, timeout=10).status == 200 else 1)
except Exception:
    sys.exit(1)' "$1"
  fi
}

child=""
workdir="$(mktemp -d "${TMPDIR:-/tmp}/fhir-spine-$kind.XXXXXX")"

stop() {
  trap - TERM INT HUP EXIT
  if [[ -n "$child" ]] && kill -0 "$child" 2>/dev/null; then
    log "stopping (pid $child)"
    kill -TERM "$child" 2>/dev/null || true
    for _ in $(seq 1 120); do
      kill -0 "$child" 2>/dev/null || break
      sleep 0.25
    done
    if kill -0 "$child" 2>/dev/null; then
      log "server did not stop within 30 s; killing it"
      kill -KILL "$child" 2>/dev/null || true
    fi
    wait "$child" 2>/dev/null || true
  fi
  rm -rf "$workdir"
}
trap 'stop; exit 0' TERM INT HUP
trap stop EXIT

start_hapi() {
  bash "$HERE/setup.sh" hapi
  local jar="$HERE/hapi/target/run/hapi-test-server.jar"
  local portfile="$workdir/port"
  local opts="${HAPI_JAVA_OPTS:--Xms256m -Xmx1536m -XX:+UseParallelGC -XX:+ExitOnOutOfMemoryError}"
  # shellcheck disable=SC2086  # word splitting of the option strings is intended
  java $opts -Djava.io.tmpdir="$workdir" -jar "$jar" \
    --server.port=0 --fhirspine.port-file="$portfile" ${HAPI_ARGS:-} >&2 &
  child=$!
  local deadline=$((SECONDS + ${SERVER_START_TIMEOUT:-600}))
  local port=""
  while [[ -z "$port" ]]; do
    kill -0 "$child" 2>/dev/null || { log "HAPI exited during start-up"; exit 1; }
    ((SECONDS < deadline)) || { log "timed out waiting for HAPI to listen"; exit 1; }
    owner_gone && { log "process $watched_pid is gone; not starting"; exit 1; }
    [[ -s "$portfile" ]] && port="$(tr -dc 0-9 < "$portfile")"
    [[ -n "$port" ]] || sleep 0.5
  done
  BASE="http://$HOST:$port/fhir"
  until metadata_ok "$BASE"; do
    kill -0 "$child" 2>/dev/null || { log "HAPI exited during start-up"; exit 1; }
    ((SECONDS < deadline)) || { log "timed out waiting for $BASE/metadata"; exit 1; }
    owner_gone && { log "process $watched_pid is gone; not starting"; exit 1; }
    sleep 0.5
  done
}

start_sekmet() {
  bash "$HERE/setup.sh" sekmet
  local py attempt port
  py="$(python_bin)"
  for attempt in 1 2 3; do
    port="$(free_port)"
    BASE="http://$HOST:$port/fhir"
    mkdir -p "$workdir/data"
    # A fresh settings file and SQLite database per start. No inbound auth, no simulator
    # (it would answer orders by itself), no traffic log, structural validation as warnings.
    cat > "$workdir/settings.yaml" <<YAML
host: $HOST
port: $port
base_url: $BASE
data_dir: $workdir/data
db_path: $workdir/data/sekmet.db
own_private_key_path: $workdir/data/keys/sekmet_private.pem
log_inbound: false
server_auth: {types: [none]}
simulator: {enabled: false}
validation: {inbound: warn}
YAML
    (cd "$workdir" && SEKMET_CONFIG="$workdir/settings.yaml" exec "$py" -m uvicorn sekmet.main:app_factory \
      --factory --host "$HOST" --port "$port" --log-level warning --no-access-log) >&2 &
    child=$!
    local deadline=$((SECONDS + ${SERVER_START_TIMEOUT:-60}))
    while kill -0 "$child" 2>/dev/null && ((SECONDS < deadline)); do
      owner_gone && { log "process $watched_pid is gone; not starting"; exit 1; }
      metadata_ok "$BASE" && return 0
      sleep 0.2
    done
    if kill -0 "$child" 2>/dev/null; then
      log "timed out waiting for $BASE/metadata"; exit 1
    fi
    wait "$child" 2>/dev/null || true
    child=""
    log "sekmet exited during start-up (attempt $attempt; port $port may have been taken)"
    rm -rf "$workdir/data"
  done
  exit 1
}

t0=$(date +%s.%N)
"start_$kind"
log "ready at $BASE after $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}') s (pid $child)"
echo "$BASE"
if [[ -n "$watched_pid" ]]; then
  while kill -0 "$child" 2>/dev/null; do
    if owner_gone; then
      log "process $watched_pid is gone"
      stop
      exit 0
    fi
    sleep 1
  done
fi
rc=0
wait "$child" || rc=$?
child=""
log "server exited by itself (status $rc)"
exit $((rc == 0 ? 1 : rc))   # a server that stops on its own is an error either way
}
main "$@"
exit $?
