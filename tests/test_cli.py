import json

import pytest

from fhir_spine.cli.main import build_parser, main

COMMANDS = sorted(build_parser()._subparsers._group_actions[0].choices)  # noqa: SLF001


def test_expected_commands_are_wired():
    assert {"extract", "synth", "report", "check", "load"} <= set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_help_on_every_command(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert f"fhir-spine {command}" in out and "--quiet" in out


def test_common_options_work_before_and_after_the_command():
    parser = build_parser()
    assert parser.parse_args(["--quiet", "extract"]).quiet is True
    assert parser.parse_args(["extract", "--quiet"]).quiet is True
    assert parser.parse_args(["extract"]).quiet is False


def test_unknown_option_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["extract", "--no-such-option"])
    assert exit_info.value.code == 2


def test_extract_pseudonymise_end_to_end(tmp_path, monkeypatch):
    key = "0123456789abcdef" * 4
    monkeypatch.setenv("FHIR_SPINE_PSEUDONYM_KEY", key)
    out = tmp_path / "out"
    assert main(["extract", "--quiet", "--pseudonymise", "--date-shift-days", "20",
                 "--out", str(out)]) == 0
    for path in out.iterdir():
        data = path.read_bytes()
        assert b"p001" not in data and key.encode() not in data, path.name


def test_extract_pseudonymise_without_key_is_a_usage_error(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("FHIR_SPINE_PSEUDONYM_KEY", raising=False)
    assert main(["extract", "--pseudonymise", "--out", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o").exists()
    assert main(["extract", "--date-shift-days", "3", "--out", str(tmp_path / "o")]) == 2



def test_json_log_format_ends_with_the_error_as_a_json_event(tmp_path, capsys):
    # issue 14 changes this: under --log-format json the one error line is the final JSON
    # event (its message is the line text mode prints), not a plain line
    assert main(["--log-format", "json", "extract", "--source", str(tmp_path / "nope")]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    last = json.loads(lines[-1])
    assert last["message"].startswith("fhir-spine: error: ") and "does not exist" in last["error"]
    assert (last["event"], last["exit_code"]) == ("extract.failed", 2)
