# Shell helpers shared by setup.sh and start.sh (sourced; needs $ROOT set).

# The Python that has the project's test extras (sekmet-fhir): $FHIR_SPINE_PYTHON, else the
# project venv, else python3 on the PATH.
python_bin() {
  if [[ -n "${FHIR_SPINE_PYTHON:-}" ]]; then
    echo "$FHIR_SPINE_PYTHON"
  elif [[ -x "$ROOT/.venv/bin/python" ]]; then
    echo "$ROOT/.venv/bin/python"
  else
    command -v python3
  fi
}
