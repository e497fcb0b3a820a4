"""A site's lexicon.yaml (issue 12 item 4): merged over the default (`extends: default`, its
entries first) or replacing it; a mistake in it is one line naming file and line, exit 3."""

from __future__ import annotations

from pathlib import Path

import pytest

from fhir_spine import review
from fhir_spine.cli.main import main
from fhir_spine.errors import ConfigError, ExitCode
from fhir_spine.settings import load_mappings

ORDER = "MedicationRequest"
ELEMENT = "MedicationRequest.medicationCodeableConcept"


def _site(tmp_path: Path, text: str) -> Path:
    folder = tmp_path / "site"
    folder.mkdir(exist_ok=True)
    (folder / "lexicon.yaml").write_text(text, encoding="utf-8")
    return folder


def test_site_lexicon_extends_the_default_its_entries_first(tmp_path):
    folder = _site(tmp_path, "extends: default\nmedication:\n"
                             "  steroid: [zoledronic]\n  systemic-therapy: [ourlocaldrug]\n")
    lexicon = load_mappings(folder).lexicon
    assert review.suggest(ORDER, ELEMENT, "OurLocalDrug 5 mg", lexicon)[0] == \
        "systemic-therapy"
    # the site's entry wins over the default's bone-modifying-agent for the same word
    assert review.suggest(ORDER, ELEMENT, "Zoledronic acid 4 MG", lexicon)[0] == "steroid"
    assert review.suggest(ORDER, ELEMENT, "Cisplatin 1 MG/ML", lexicon)[0] == \
        "systemic-therapy"  # the default still applies
    assert review.suggest(ORDER, ELEMENT, "OurLocalDrug 5 mg") is None  # default alone
    files = [str(f.path) for f in load_mappings(folder).files]
    assert str(folder / "lexicon.yaml") in files and "fhir_spine/mappings/lexicon.yaml" in files


def test_site_lexicon_without_extends_replaces_the_default(tmp_path):
    lexicon = load_mappings(_site(tmp_path, "medication:\n  systemic-therapy: [ourlocaldrug]\n"
                                  )).lexicon
    assert review.suggest(ORDER, ELEMENT, "OurLocalDrug", lexicon)[0] == "systemic-therapy"
    assert review.suggest(ORDER, ELEMENT, "Cisplatin 1 MG/ML", lexicon) is None
    assert review.suggest("Procedure", "Procedure.code", "Radiation therapy", lexicon) is None


@pytest.mark.parametrize(("text", "line", "needle"), [
    ("extends: default\nmedications:\n  systemic-therapy: [x]\n", 2, "unknown group"),
    ("medication:\n  systemic-therapy: cisplatin\n", 2, "expected a list of terms"),
    ("medication:\n  systemic-therapy:\n    - cisplatin\n    - [a, b]\n", 4, "term"),
    ("medication:\n  systemic-therapy: [cisplatin & ]\n", 2, "term"),
    ("procedure:\n  vas: [pain]\n", 2, "has element observation"),
    ("extends: site\n", 1, "extends"),
    ("medication:\n  systemic-therapy: [a\n  steroid: [b]\n", 3, "not valid YAML"),
])
def test_mistakes_name_file_and_line(tmp_path, text, line, needle):
    folder = _site(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_mappings(folder)
    message = str(caught.value)
    assert message.startswith(f"{folder / 'lexicon.yaml'}:{line}"), message
    assert needle in message and "\n" not in message


def test_a_bad_site_lexicon_stops_extract_with_exit_3(tmp_path, capsys):
    folder = _site(tmp_path, "medication:\n  systemic-therapy: [cisplatin]\n  bogus: 3\n")
    out = tmp_path / "out"
    status = main(["--quiet", "extract", "--out", str(out), "--mappings", str(folder)])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert status == ExitCode.CONFIG
    assert len(err) == 1 and err[0].startswith("fhir-spine: error: "), err
    assert f"{folder / 'lexicon.yaml'}:3: lexicon: medication.bogus" in err[0]
    assert not out.exists()
