import pytest

from fhir_spine.concepts import Coding, build_concept_map
from fhir_spine.errors import ConfigError
from fhir_spine.settings import PathwaySettings, load_mappings

ICD = "http://hl7.org/fhir/sid/icd-10-cm"


@pytest.fixture(scope="module")
def cmap():
    return load_mappings().concepts


def test_codes_from_several_systems_pick_the_mapped_one(cmap):
    codings = [Coding("http://example.org/local-proc", "XYZ"),
               Coding("http://www.ama-assn.org/go/cpt", "20225")]
    assert cmap.first("procedure", codings).concept == "vertebral-biopsy"


def test_icd10_ranges_and_prefixes(cmap):
    assert cmap.first("finding", [Coding(ICD, "C90.00")]).concept == "tumour-haematological"
    assert cmap.first("finding", [Coding(ICD, "C79.51")]).concept == "secondary-malignancy"
    assert cmap.first("finding", [Coding(ICD, "C7B.03")]).concept == "secondary-malignancy"
    assert cmap.first("finding", [Coding(ICD, "C34.90")]).concept == "tumour-solid-metastasis"
    assert cmap.first("finding", [Coding(ICD, "C18.7")]).concept == "tumour-other"
    assert cmap.first("finding", [Coding(ICD, "C41.2")]).concept == "tumour-primary-bone"
    assert cmap.first("finding", [Coding(ICD, "M54.5")]) is None


def test_atc_classes(cmap):
    atc = "http://www.whocc.no/atc"
    assert cmap.first("medication", [Coding(atc, "L01FF02")]).concept == "systemic-therapy"
    assert cmap.first("medication", [Coding(atc, "L04AX04")]).concept == "systemic-therapy"
    assert cmap.first("medication", [Coding(atc, "M05BA08")]).concept == "bone-modifying-agent"
    assert cmap.first("medication", [Coding(atc, "H02AB02")]).concept == "steroid"


def test_coded_values_carry_numbers(cmap):
    m = cmap.first("value", [Coding("http://loinc.org", "LA9625-0")])
    assert (m.concept, m.value) == ("ecog-value", 3.0)


def test_the_wrong_pain_code_is_not_mapped(cmap):
    # coding-research.md: 72133-2 is MoCA, not pain.
    assert cmap.first("observation", [Coding("http://loinc.org", "72133-2")]) is None


def test_site_mappings_extend_default(tmp_path):
    (tmp_path / "concepts.yaml").write_text(
        "extends: default\nconcepts:\n  vertebral-biopsy:\n    element: procedure\n"
        "    codes: [{system: http://site.example/proc, code: VB1}]\n")
    (tmp_path / "settings.yaml").write_text("same_session_gap_hours: 2\n")
    m = load_mappings(tmp_path)
    assert m.concepts.first("procedure", [Coding("http://site.example/proc", "VB1")]).concept \
        == "vertebral-biopsy"
    assert m.concepts.first("procedure", [Coding("http://www.ama-assn.org/go/cpt", "20225")])
    assert m.settings.same_session_gap_hours == 2
    assert any(f.path.parent == tmp_path for f in m.files)


def test_site_mappings_replace_default_without_extends(tmp_path):
    (tmp_path / "concepts.yaml").write_text(
        "concepts:\n  stabilization:\n    element: procedure\n"
        "    codes: [{system: http://site.example/proc, code: ST}]\n")
    m = load_mappings(tmp_path)
    assert m.concepts.first("procedure", [Coding("http://www.ama-assn.org/go/cpt", "20225")]) \
        is None


@pytest.mark.parametrize("doc,message", [
    ({"concepts": {"x": {"element": "nope", "codes": []}}}, "element"),
    ({"concepts": {"x": {"element": "procedure", "codes": [{"code": "1"}]}}}, "without a system"),
    ({"concepts": {"x": {"element": "finding", "codes": [{"system": "s", "range": "C1-C9"}]}}},
     "range"),
])
def test_bad_concept_files_are_config_errors(doc, message):
    with pytest.raises(ConfigError, match=message):
        build_concept_map([doc])


def test_bad_settings_are_config_errors(tmp_path):
    (tmp_path / "settings.yaml").write_text("timezone: Mars/Olympus\n")
    with pytest.raises(ConfigError, match="time zone"):
        load_mappings(tmp_path)
    with pytest.raises(ConfigError, match="unknown key"):
        PathwaySettings.from_mapping({"gap": 1})


RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
SCT = "http://snomed.info/sct"


def test_a_code_listed_under_several_concepts_belongs_to_each(cmap):
    # Synthea's combined chemoradiation (SNOMED 703423002) is both modalities.
    found = cmap.matches("procedure", [Coding(SCT, "703423002")])
    assert {m.concept for m in found} == {"radiotherapy", "systemic-therapy-procedure"}
    # prefix and range entries stay first-match-wins catch-alls
    assert [m.concept for m in cmap.matches("finding", [Coding(ICD, "C79.51")])] \
        == ["secondary-malignancy"]
    assert [m.concept for m in cmap.matches("procedure", [Coding(SCT, "367336001")])] \
        == ["systemic-therapy-procedure"]


@pytest.mark.parametrize("code", ["1736854", "583214", "1734340", "1736776", "1860480",
                                  "752899", "349472"])
def test_rxnorm_clinical_drugs_of_cancer_therapy_are_systemic_therapy(cmap, code):
    assert cmap.first("medication", [Coding(RXNORM, code)]).concept == "systemic-therapy"


@pytest.mark.parametrize("code", ["94225005", "94391008", "94381002", "94161006", "94493005",
                                  "94260004", "94222008"])
def test_snomed_secondary_malignancy_descendants_offline(cmap, code):
    assert cmap.first("finding", [Coding(SCT, code)]).concept == "secondary-malignancy"
