"""Issue 14, point 7: each message says what to do (YAML line and column, a --timezone
typo is a usage error with the closest names, a short exit-9 message, "did you mean" for
option typos)."""

import pytest

from fhir_spine.cli.main import main
from fhir_spine.errors import ExitCode
from fhir_spine.refresh.run import scope_difference


def error_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines()
             if line.startswith("fhir-spine:")]
    assert len(lines) == 1, lines
    return lines[0]


def test_yaml_error_names_line_and_column(tmp_path, capsys):
    site = tmp_path / "site"
    site.mkdir()
    (site / "settings.yaml").write_text("timezone: UTC\nsame_session_gap_hours: [6\n")
    assert main(["extract", "--mappings", str(site), "--out", str(tmp_path / "o")]) \
        == ExitCode.CONFIG
    line = error_line(capsys)
    assert f"{site / 'settings.yaml'}:3:1: not valid YAML" in line
    assert "fix the file at that line" in line


def test_timezone_typo_is_a_usage_error_with_suggestions(tmp_path, capsys):
    assert main(["extract", "--timezone", "Europe/Berln", "--out", str(tmp_path / "o")]) \
        == ExitCode.USAGE
    assert "did you mean Europe/Berlin" in error_line(capsys)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("argv, hint", [
    (["extract", "--ot", "x"], "--ot -> --out"),
    (["extract", "--time-zone", "UTC"], "--time-zone -> --timezone"),
    (["refresh", "--server", "http://127.0.0.1:9/fhir", "--out", "o", "--alow-shrink"],
     "--alow-shrink -> --allow-shrink"),
])
def test_option_typo_suggests_the_closest_option(argv, hint, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == ExitCode.USAGE
    assert f"did you mean {hint}?" in capsys.readouterr().err


def test_state_scope_message_is_short_and_names_what_changed():
    before = {"mode": "rest", "cohort": "index-procedure-codes",
              "index_codes": [f"http://snomed.info/sct|{n}" for n in range(40)]}
    now = {**before, "index_codes": before["index_codes"][:-1] + ["http://loinc.org|1"]}
    text = scope_difference(before, now)
    assert text == "index_codes: +http://loinc.org|1, -http://snomed.info/sct|39"
    bulk = scope_difference(before, {"mode": "bulk", "level": "system", "group_id": None,
                                     "type_filters": []})
    assert "mode 'rest' -> 'bulk'" in bulk and len(bulk) <= 200
