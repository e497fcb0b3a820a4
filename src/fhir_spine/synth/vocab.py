"""The synthetic hospital's vocabulary: which codes its records carry.

The generator plays a FHIR *source*, so it keeps its own code lists instead of reading
`fhir_spine/mappings/concepts.yaml`: a test checks that every pathway code used here is one the
default mappings know, which catches drift on either side.
"""

from __future__ import annotations

from dataclasses import dataclass

from fhir_spine.pathway.vocabulary import TumourGroup

SCT = "http://snomed.info/sct"
LOINC = "http://loinc.org"
CPT = "http://www.ama-assn.org/go/cpt"
ICD10PCS = "http://www.cms.gov/Medicare/Coding/ICD10"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
ATC = "http://www.whocc.no/atc"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
ACT_PRIORITY = "http://terminology.hl7.org/CodeSystem/v3-ActPriority"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
MCODE_REQUESTED = "http://hl7.org/fhir/us/mcode/CodeSystem/snomed-requested-cs"
LOCAL = "http://fhir-spine.org/fhir/CodeSystem/spine-pathway"
UCUM = "http://unitsofmeasure.org"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
CONDITION_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
CONDITION_VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
CONDITION_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"
MRN_SYSTEM = "https://ehr.example.org/fhir/sid/mrn"
ABSOLUTE_BASE = "https://ehr.example.org/fhir"


@dataclass(frozen=True)
class Code:
    """One coding; `display` is optional because real feeds often omit it."""

    system: str
    code: str
    display: str | None = None

    def coding(self) -> dict[str, str]:
        out = {"system": self.system, "code": self.code}
        if self.display:
            out["display"] = self.display
        return out


# ------------------------------------------------------------------ spinal levels
CERVICAL = tuple(f"C{i}" for i in range(1, 8))
THORACIC = tuple(f"T{i}" for i in range(1, 13))
LUMBAR = tuple(f"L{i}" for i in range(1, 6))
LEVELS: tuple[str, ...] = CERVICAL + THORACIC + LUMBAR + ("S",)

LEVEL_SCT: dict[str, str] = {
    "C1": "14806007", "C2": "39976000", "C3": "113205007", "C4": "5329002",
    "C5": "36978003", "C6": "36054005", "C7": "87391001", "T1": "64864005",
    "T2": "53733008", "T3": "1626008", "T4": "73071006", "T5": "56401006",
    "T6": "45296009", "T7": "62487009", "T8": "11068009", "T9": "82687006",
    "T10": "7610001", "T11": "12989004", "T12": "23215003", "L1": "66794005",
    "L2": "14293000", "L3": "36470004", "L4": "11994002", "L5": "49668003",
    "S": "54735007",
}


def level_code(level: str) -> Code:
    name = "Sacrum" if level == "S" else f"{level} vertebra"
    return Code(SCT, LEVEL_SCT[level], name)


def sins_location_points(level: str) -> int:
    """SINS location component (Fisher 2010): junctional 3, mobile 2, semi-rigid 1."""
    if level in ("C1", "C2", "C7", "T1", "T2", "T11", "T12", "L1", "L5", "S"):
        return 3
    if level in ("C3", "C4", "C5", "C6", "L2", "L3", "L4"):
        return 2
    return 1


# Non-vertebral body sites: metastases elsewhere and the decoy lung biopsy.
SITE_LUNG = Code(SCT, "39607008", "Lung structure")
SITE_LIVER = Code(SCT, "10200004", "Liver structure")
SITE_BRAIN = Code(SCT, "12738006", "Brain structure")
SITE_FEMUR = Code(SCT, "71341001", "Bone structure of femur")
SITE_ILIUM = Code(SCT, "22356005", "Bone structure of ilium")

# ------------------------------------------------------------------ procedures
# Each pathway procedure kind: the codings one site might use, first = local code.
PROCEDURE_CODES: dict[str, tuple[Code, ...]] = {
    "biopsy": (
        Code(LOCAL, "vertebral-core-biopsy", "Percutaneous core-needle biopsy of vertebra"),
        Code(CPT, "20225", "Biopsy, bone, trocar, or needle; deep"),
        Code(SCT, "86273004", "Biopsy"),
        Code(SCT, "50590007", "Trephine biopsy"),
    ),
    "stabilization": (
        Code(LOCAL, "percutaneous-pedicle-screw-fixation",
             "Percutaneous pedicle screw-rod fixation"),
        Code(CPT, "22842", "Posterior segmental instrumentation; 3 to 6 vertebral segments"),
        Code(SCT, "257834006", "Internal fixation using screw"),
        Code(SCT, "118470002", "Internal skeletal fixation"),
    ),
    "revision": (
        Code(LOCAL, "instrumentation-revision", "Revision of spinal instrumentation"),
        Code(CPT, "22849", "Reinsertion of spinal fixation device"),
    ),
    "decompression": (
        Code(LOCAL, "spinal-cord-decompression", "Decompression of spinal cord"),
        Code(SCT, "10836008", "Decompression of spinal cord"),
        Code(SCT, "387731002", "Laminectomy"),
    ),
    "resection": (
        Code(LOCAL, "spinal-tumour-resection", "Resection of spinal tumour"),
        Code(SCT, "708651002", "Partial excision of vertebra"),
    ),
    "separation": (Code(LOCAL, "separation-surgery", "Separation surgery"),),
    "radiotherapy": (
        Code(SCT, "1217123003", "Radiotherapy course of treatment"),
        Code(MCODE_REQUESTED, "USCRS-33529", "Radiotherapy course of treatment"),
        Code(SCT, "33195004", "External beam radiation therapy procedure"),
        Code(LOCAL, "stereotactic-body-radiotherapy", "Stereotactic body radiotherapy"),
    ),
    "systemic-procedure": (
        Code(SCT, "367336001", "Chemotherapy"),
        Code(SCT, "76334006", "Immunological therapy"),
    ),
    # Unrelated history: never pathway events.
    "appendectomy": (Code(SCT, "80146002", "Appendectomy"),),
    "cholecystectomy": (Code(SCT, "38102005", "Cholecystectomy"),),
}
CPT_LONG_CONSTRUCT = Code(CPT, "22843",
                          "Posterior segmental instrumentation; 7 to 12 vertebral segments")

# ICD-10-PCS percutaneous diagnostic excision of a vertebra, by region.
BIOPSY_PCS: dict[str, Code] = {
    "C": Code(ICD10PCS, "0PB33ZX", "Excision of Cervical Vertebra, Percutaneous, Diagnostic"),
    "T": Code(ICD10PCS, "0PB43ZX", "Excision of Thoracic Vertebra, Percutaneous, Diagnostic"),
    "L": Code(ICD10PCS, "0QB03ZX", "Excision of Lumbar Vertebra, Percutaneous, Diagnostic"),
    "S": Code(ICD10PCS, "0QB13ZX", "Excision of Sacrum, Percutaneous, Diagnostic"),
}
SURGICAL_CATEGORY = Code(SCT, "387713003", "Surgical procedure")
DIAGNOSTIC_CATEGORY = Code(SCT, "103693007", "Diagnostic procedure")
RADIOTHERAPY_CATEGORY = Code(SCT, "108290001", "Radiation oncology AND/OR radiotherapy")

# ------------------------------------------------------------------ pathology
REPORT_CODES: dict[str, Code] = {
    "11529-5": Code(LOINC, "11529-5", "Surgical pathology study"),
    "22637-3": Code(LOINC, "22637-3", "Pathology report final diagnosis Narrative"),
    "60568-3": Code(LOINC, "60568-3", "Pathology Synoptic report"),
}
REPORT_CATEGORY_SP = Code(V2_0074, "SP", "Surgical Pathology")
FINDING_INSUFFICIENT = Code(LOCAL, "histology-insufficient", "Insufficient or inconclusive sample")
FINDING_NON_NEOPLASTIC = Code(LOCAL, "histology-non-neoplastic", "No neoplasm identified")


@dataclass(frozen=True)
class Tumour:
    """A primary tumour the cohort can carry, with what follows from it clinically."""

    key: str
    group: TumourGroup
    code: Code  # primary cancer Condition.code (ICD-10-CM)
    conclusion: tuple[Code, ...]  # pathology conclusionCode (same tumour group)
    drugs: tuple[str, ...]  # keys of SYSTEMIC_DRUGS, first-line options
    sex: str | None = None  # only patients of this sex


TUMOURS: tuple[Tumour, ...] = (
    Tumour("breast", "solid-metastasis",
           Code(ICD10CM, "C50.911",
                "Malignant neoplasm of unspecified site of right female breast"),
           (Code(ICD10CM, "C50.911"),), ("letrozole", "tamoxifen", "paclitaxel"), "female"),
    Tumour("lung", "solid-metastasis",
           Code(ICD10CM, "C34.90", "Malignant neoplasm of unspecified part of bronchus or lung"),
           (Code(ICD10CM, "C34.90"),), ("pembrolizumab", "carboplatin", "osimertinib")),
    Tumour("prostate", "solid-metastasis", Code(ICD10CM, "C61", "Malignant neoplasm of prostate"),
           (Code(ICD10CM, "C61"),), ("abiraterone", "enzalutamide", "docetaxel"), "male"),
    Tumour("kidney", "solid-metastasis",
           Code(ICD10CM, "C64.1", "Malignant neoplasm of right kidney, except renal pelvis"),
           (Code(ICD10CM, "C64.1"),), ("sunitinib", "pembrolizumab")),
    Tumour("thyroid", "solid-metastasis",
           Code(ICD10CM, "C73", "Malignant neoplasm of thyroid gland"),
           (Code(ICD10CM, "C73"),), ("lenvatinib",)),
    Tumour("myeloma", "haematological",
           Code(ICD10CM, "C90.00", "Multiple myeloma not having achieved remission"),
           (Code(ICD10CM, "C90.00"), Code(SCT, "109989006", "Multiple myeloma")),
           ("bortezomib", "lenalidomide")),
    Tumour("lymphoma", "haematological",
           Code(ICD10CM, "C83.30", "Diffuse large B-cell lymphoma, unspecified site"),
           (Code(ICD10CM, "C83.30"), Code(SCT, "118600007", "Malignant lymphoma")),
           ("rituximab", "doxorubicin")),
    Tumour("chordoma", "primary-bone",
           Code(ICD10CM, "C41.2", "Malignant neoplasm of vertebral column"),
           (Code(LOCAL, "chordoma", "Chordoma"), Code(ICD10CM, "C41.2")), ("doxorubicin",)),
    Tumour("chondrosarcoma", "primary-bone",
           Code(ICD10CM, "C41.2", "Malignant neoplasm of vertebral column"),
           (Code(ICD10CM, "C41.2"),), ("doxorubicin", "cisplatin")),
    Tumour("giant-cell", "primary-bone",
           Code(ICD10CM, "D48.0", "Neoplasm of uncertain behavior of bone and articular cartilage"),
           (Code(LOCAL, "giant-cell-tumour-of-bone", "Giant cell tumour of bone"),),
           ("cisplatin",)),
    Tumour("osteoblastoma", "primary-bone",
           Code(ICD10CM, "D16.6", "Benign neoplasm of vertebral column"),
           (Code(ICD10CM, "D16.6"),), ("cisplatin",)),
    Tumour("colon", "other", Code(ICD10CM, "C18.9", "Malignant neoplasm of colon, unspecified"),
           (Code(ICD10CM, "C18.9"),), ("oxaliplatin",)),
    Tumour("ovary", "other", Code(ICD10CM, "C56.9", "Malignant neoplasm of unspecified ovary"),
           (Code(ICD10CM, "C56.9"),), ("carboplatin", "paclitaxel"), "female"),
    Tumour("bladder", "other", Code(ICD10CM, "C67.9", "Malignant neoplasm of bladder, unspecified"),
           (Code(ICD10CM, "C67.9"),), ("cisplatin", "pembrolizumab")),
    Tumour("melanoma", "other", Code(ICD10CM, "C43.9", "Malignant melanoma of skin, unspecified"),
           (Code(ICD10CM, "C43.9"),), ("pembrolizumab",)),
)

# The spinal lesion of a solid / other primary: secondary malignant neoplasm of bone.
LESION_CODES = (
    Code(ICD10CM, "C79.51", "Secondary malignant neoplasm of bone"),
    Code(SCT, "94222008", "Secondary malignant neoplasm of bone"),
)
# Metastases outside the index lesion: code and (optional) non-vertebral site.
METASTASIS_ELSEWHERE: tuple[tuple[Code, Code | None], ...] = (
    (Code(ICD10CM, "C78.00", "Secondary malignant neoplasm of unspecified lung"), SITE_LUNG),
    (Code(ICD10CM, "C78.7", "Secondary malignant neoplasm of liver"), SITE_LIVER),
    (Code(ICD10CM, "C79.31", "Secondary malignant neoplasm of brain"), SITE_BRAIN),
    (Code(ICD10CM, "C79.51", "Secondary malignant neoplasm of bone"), SITE_FEMUR),
    (Code(ICD10CM, "C79.51", "Secondary malignant neoplasm of bone"), SITE_ILIUM),
    (Code(ICD10CM, "C79.52", "Secondary malignant neoplasm of bone marrow"), None),
)
NON_NEOPLASTIC_CONDITIONS: dict[str, Code] = {
    "T": Code(ICD10CM, "M46.24", "Osteomyelitis of vertebra, thoracic region"),
    "L": Code(ICD10CM, "M46.26", "Osteomyelitis of vertebra, lumbar region"),
    "fracture": Code(ICD10CM, "M80.08XA", "Age-related osteoporosis with current pathological "
                     "fracture, vertebra(e), initial encounter for fracture"),
}

# ------------------------------------------------------------------ medications


@dataclass(frozen=True)
class Drug:
    key: str
    role: str  # systemic | bone-modifying | steroid | supportive | antibiotic
    name: str
    atc: str
    rxnorm: str | None = None

    def codes(self, with_rxnorm: bool) -> list[Code]:
        out = [Code(ATC, self.atc, self.name)]
        if with_rxnorm and self.rxnorm:
            out.append(Code(RXNORM, self.rxnorm, self.name))
        return out


_DRUGS = (
    Drug("pembrolizumab", "systemic", "pembrolizumab", "L01FF02", "1547545"),
    Drug("paclitaxel", "systemic", "paclitaxel", "L01CD01", "56946"),
    Drug("docetaxel", "systemic", "docetaxel", "L01CD02", "72962"),
    Drug("carboplatin", "systemic", "carboplatin", "L01XA02", "40048"),
    Drug("cisplatin", "systemic", "cisplatin", "L01XA01", "2555"),
    Drug("oxaliplatin", "systemic", "oxaliplatin", "L01XA03"),
    Drug("bortezomib", "systemic", "bortezomib", "L01XG01", "358258"),
    Drug("lenalidomide", "systemic", "lenalidomide", "L04AX04", "342369"),
    Drug("rituximab", "systemic", "rituximab", "L01FA01"),
    Drug("doxorubicin", "systemic", "doxorubicin", "L01DB01"),
    Drug("letrozole", "systemic", "letrozole", "L02BG04", "72965"),
    Drug("tamoxifen", "systemic", "tamoxifen", "L02BA01", "10324"),
    Drug("abiraterone", "systemic", "abiraterone", "L02BX03"),
    Drug("enzalutamide", "systemic", "enzalutamide", "L02BB04"),
    Drug("osimertinib", "systemic", "osimertinib", "L01EB04"),
    Drug("sunitinib", "systemic", "sunitinib", "L01EX01"),
    Drug("lenvatinib", "systemic", "lenvatinib", "L01EX08"),
    Drug("zoledronic-acid", "bone-modifying", "zoledronic acid", "M05BA08", "77655"),
    Drug("denosumab", "bone-modifying", "denosumab", "M05BX04", "993449"),
    Drug("dexamethasone", "steroid", "dexamethasone", "H02AB02", "3264"),
    Drug("filgrastim", "supportive", "filgrastim", "L03AA02"),
    Drug("cefazolin", "antibiotic", "cefazolin", "J01DB04"),
)
DRUGS: dict[str, Drug] = {d.key: d for d in _DRUGS}

# ------------------------------------------------------------------ observations
MEASURE_CODES: dict[str, Code] = {
    "vas": Code(LOINC, "38214-3", "Pain severity [Score] Visual analog score"),
    "sosgoq_total": Code(LOCAL, "sosgoq-total", "SOSGOQ2.0 total score"),
    "sosgoq_physical": Code(LOCAL, "sosgoq-physical-function", "SOSGOQ2.0 physical function"),
    "sosgoq_pain": Code(LOCAL, "sosgoq-pain", "SOSGOQ2.0 pain"),
    "sosgoq_mental": Code(LOCAL, "sosgoq-mental-health", "SOSGOQ2.0 mental health"),
    "sosgoq_social": Code(LOCAL, "sosgoq-social-function", "SOSGOQ2.0 social function"),
    "sins_total": Code(LOCAL, "sins-total", "SINS total"),
    "sins_location": Code(LOCAL, "sins-location", "SINS location"),
    "sins_pain": Code(LOCAL, "sins-pain", "SINS pain"),
    "sins_bone_lesion": Code(LOCAL, "sins-bone-lesion", "SINS bone lesion"),
    "sins_alignment": Code(LOCAL, "sins-alignment", "SINS radiographic alignment"),
    "sins_collapse": Code(LOCAL, "sins-collapse", "SINS vertebral body collapse"),
    "sins_posterolateral": Code(LOCAL, "sins-posterolateral", "SINS posterolateral involvement"),
    "ecog": Code(LOINC, "89247-1", "ECOG Performance Status score"),
    "asa": Code(LOINC, "97816-3", "American society of anesthesiologists morbidity state"),
}
SOSGOQ_DOMAINS = ("total", "physical", "pain", "mental", "social")
# SINS components and the values each may take (Fisher 2010).
SINS_COMPONENTS: dict[str, tuple[int, ...]] = {
    "sins_pain": (0, 1, 3),
    "sins_bone_lesion": (0, 1, 2),
    "sins_alignment": (0, 2, 4),
    "sins_collapse": (0, 1, 2, 3),
    "sins_posterolateral": (0, 1, 3),
}
ECOG_ANSWERS = ("LA9622-7", "LA9623-5", "LA9624-3", "LA9625-0", "LA9626-8")
ASA_ANSWERS = ("413495001", "413496000", "413497009", "413498004")

# ------------------------------------------------------------------ encounters
PAIN_REASONS = (
    Code(SCT, "22253000", "Pain"),
    Code(SCT, "161891005", "Backache"),
    Code(SCT, "279039007", "Low back pain"),
    Code(LOCAL, "spinal-pain", "Spinal pain"),
)
