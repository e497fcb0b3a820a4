"""Mappings folder loading: concepts, pathway settings and view definitions.

The defaults ship inside the package (`fhir_spine/mappings/`, read through
`importlib.resources`, so a built wheel has them). `--mappings DIR` layers a site's
folder over them: a `settings.yaml` there is merged key by key, a `concepts.yaml` with
`extends: default` is merged over the default map (else replaces it), so is a
`lexicon.yaml` (the review loop's suggestions), and any
`views/<Type>.json` there replaces the default view of that type. Every file used is
hashed into the manifest so a dataset says exactly which rules made it.
"""

from __future__ import annotations

import atexit
import hashlib
import json
from contextlib import ExitStack
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from fhir_spine import histology_text
from fhir_spine.concepts import ConceptMap, build_concept_map
from fhir_spine.errors import ConfigError
from fhir_spine.lexicon import Lexicon
from fhir_spine.lexicon import merged as merged_lexicon
from fhir_spine.lexicon import parse as parse_lexicon
from fhir_spine.questionnaires import QuestionnaireMap, build_questionnaire_map

_PACKAGE = "fhir_spine"
_package_files = ExitStack()
atexit.register(_package_files.close)


def _package_folder(name: str) -> Path:
    """A data folder shipped in the package, as a real filesystem path.

    For an ordinary (unzipped) install this is the folder itself; from a zipped package
    `as_file` extracts it to a temporary folder that lives until the process exits.
    """
    traversable = resources.files(_PACKAGE) / name
    return _package_files.enter_context(resources.as_file(traversable)).resolve()


DEFAULT_MAPPINGS = _package_folder("mappings")
DEMO_COHORT = _package_folder("demo")
# The roles a procedure concept plays on the pathway (pathway.timeline.role_of).
PROCEDURE_ROLES = ("biopsy", "stabilization", "definitive-therapy", "revision", "decompression")


@dataclass(frozen=True)
class PathwaySettings:
    """The operational definitions of PATHWAY.md that a site may change."""

    timezone: str = "UTC"
    same_session_gap_hours: float = 6.0
    # FHIR terminology server expanding the `is-a` concepts (fhir_spine/terminology.py);
    # empty = offline expansions only. Optional: a server that is down is a warning.
    terminology: str = ""
    terminology_optional: bool = False
    # `count` of each `$expand`; an expansion that reaches it is incomplete and its codes
    # are decided one by one (terminology_codes.py).
    terminology_max_expansion: int = 10000
    therapy_modality_window_days: int = 30
    baseline_lookback_days: int = 90
    at_diagnosis_window_days: int = 14
    metastasis_lookahead_days: int = 0
    minimum_age_years: int = 18
    excluded_level_prefixes: tuple[str, ...] = ("C",)
    required_measures: dict[str, tuple[str, ...]] = field(
        default_factory=lambda: {
            "vas": ("baseline", "at-diagnosis"),
            "sosgoq_total": ("baseline", "at-diagnosis"),
        }
    )
    procedure_statuses: frozenset[str] = frozenset({"completed"})
    # Per role of the procedure's concept (pathway.timeline.role_of); other roles use
    # `procedure_statuses`. A definitive therapy counts once it started.
    procedure_statuses_by_role: dict[str, tuple[str, ...]] = field(
        default_factory=lambda: {
            "biopsy": ("completed",),
            "stabilization": ("completed",),
            "definitive-therapy": ("completed", "in-progress", "stopped"),
        }
    )
    report_statuses: frozenset[str] = frozenset({"final", "amended", "corrected", "appended"})
    observation_statuses: frozenset[str] = frozenset(
        {"final", "amended", "corrected", "preliminary"}
    )
    medication_request_statuses: frozenset[str] = frozenset(
        {"active", "completed", "on-hold", "stopped"}
    )
    medication_request_intents: frozenset[str] = frozenset(
        {"order", "original-order", "reflex-order", "filler-order", "instance-order", "plan"}
    )
    medication_administration_statuses: frozenset[str] = frozenset(
        {"completed", "in-progress", "stopped"})
    medication_statement_statuses: frozenset[str] = frozenset(
        {"active", "completed", "stopped", "on-hold"})
    condition_verification_excluded: frozenset[str] = frozenset({"entered-in-error", "refuted"})
    readmission_encounter_classes: frozenset[str] = frozenset({"IMP", "EMER", "ACUTE"})
    questionnaire_response_statuses: frozenset[str] = frozenset({"completed", "amended"})
    # Narrative pathology conclusions (fhir_spine.histology_text; issue 11, item 5).
    narrative_histology: dict[str, tuple[str, ...]] = field(
        default_factory=lambda: dict(histology_text.DEFAULT_FINDINGS))
    narrative_negations: tuple[str, ...] = histology_text.DEFAULT_NEGATIONS
    narrative_post_negations: tuple[str, ...] = histology_text.DEFAULT_POST_NEGATIONS
    narrative_uncertain: tuple[str, ...] = histology_text.DEFAULT_UNCERTAIN
    narrative_clause_breaks: tuple[str, ...] = histology_text.DEFAULT_CLAUSE_BREAKS

    @property
    def text_rules(self) -> histology_text.TextRules:
        """The narrative conclusion rule these settings define."""
        return histology_text.TextRules.from_settings(
            self.narrative_histology, self.narrative_negations,
            self.narrative_post_negations, self.narrative_uncertain,
            self.narrative_clause_breaks)

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def procedure_statuses_for(self, role: str) -> frozenset[str]:
        """Procedure statuses that count for a concept of this role (PATHWAY.md "Events")."""
        listed = self.procedure_statuses_by_role.get(role)
        return frozenset(listed) if listed is not None else self.procedure_statuses

    @classmethod
    def from_mapping(cls, raw: dict[str, Any]) -> PathwaySettings:
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(f"settings.yaml: unknown key(s): {', '.join(unknown)}")
        kwargs: dict[str, Any] = {}
        defaults = cls()
        for key, value in raw.items():
            current = getattr(defaults, key)
            try:
                if isinstance(current, frozenset):
                    kwargs[key] = frozenset(str(v) for v in value)
                elif isinstance(current, tuple):
                    kwargs[key] = tuple(str(v) for v in value)
                elif isinstance(current, dict):
                    kwargs[key] = {str(k): tuple(str(t) for t in v) for k, v in value.items()}
                elif isinstance(current, bool):
                    kwargs[key] = bool(value)
                elif isinstance(current, int):
                    kwargs[key] = int(value)
                elif isinstance(current, float):
                    kwargs[key] = float(value)
                else:
                    kwargs[key] = str(value)
            except (TypeError, ValueError, AttributeError) as exc:
                raise ConfigError(f"settings.yaml: {key}: {exc}") from None
        settings = cls(**kwargs)
        unknown_roles = sorted(set(settings.procedure_statuses_by_role) - set(PROCEDURE_ROLES))
        if unknown_roles:
            raise ConfigError(f"settings.yaml: procedure_statuses_by_role: unknown role(s) "
                              f"{', '.join(unknown_roles)}; expected {', '.join(PROCEDURE_ROLES)}")
        if settings.terminology_max_expansion < 1:
            raise ConfigError("settings: terminology_max_expansion must be at least 1, not "
                              f"{settings.terminology_max_expansion}")
        try:
            settings.tz  # noqa: B018 - validate early, with a clear message
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(f"settings: unknown time zone {settings.timezone!r}") from None
        return settings


@dataclass(frozen=True)
class MappingFile:
    path: Path
    sha256: str


@dataclass
class Mappings:
    settings: PathwaySettings
    concepts: ConceptMap
    views: dict[str, dict[str, Any]]
    files: list[MappingFile]
    view_files: dict[str, str] = field(default_factory=dict)  # resource type -> its file
    questionnaires: QuestionnaireMap = field(default_factory=QuestionnaireMap)
    terminology: dict[str, Any] | None = None  # the manifest's `terminology` block
    # the review loop's display-text lexicon (lexicon.py); None: the package default
    lexicon: Lexicon | None = None


def _shown(path: Path) -> Path:
    """How a mapping file is named in manifests: a default one relative to the package
    (`fhir_spine/mappings/...`, the same wherever it is installed), a site's as given."""
    try:
        return Path(_PACKAGE, "mappings", path.relative_to(DEFAULT_MAPPINGS))
    except ValueError:
        return path


def _read_yaml(path: Path, files: list[MappingFile]) -> dict[str, Any]:
    try:
        data = path.read_bytes()
        doc = yaml.safe_load(data) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(yaml_error_text(path, exc)) from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    files.append(MappingFile(_shown(path), hashlib.sha256(data).hexdigest()))
    return doc


def yaml_error_text(path: Path, exc: yaml.YAMLError) -> str:
    """`file:line:column: not valid YAML: problem` (1-based, as editors count)."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context = getattr(exc, "context", None)
    return (f"{where}: not valid YAML: {problem}" + (f" ({context})" if context else "")
            + "; fix the file at that line (indentation and `key: value` pairs)")


def load_mappings(
    site_dir: Path | None = None, overrides: dict[str, Any] | None = None
) -> Mappings:
    """Load the default mappings, layer `site_dir` over them, then CLI `overrides`."""
    if not DEFAULT_MAPPINGS.is_dir():
        raise ConfigError(f"default mappings folder not found at {DEFAULT_MAPPINGS}")
    if site_dir is not None and not site_dir.is_dir():
        raise ConfigError(f"--mappings {site_dir}: not a folder")
    files: list[MappingFile] = []

    raw_settings = _read_yaml(DEFAULT_MAPPINGS / "settings.yaml", files)
    if site_dir is not None and (site_dir / "settings.yaml").is_file():
        raw_settings.update(_read_yaml(site_dir / "settings.yaml", files))
    raw_settings.update({k: v for k, v in (overrides or {}).items() if v is not None})
    settings = PathwaySettings.from_mapping(raw_settings)

    concept_docs = [_read_yaml(DEFAULT_MAPPINGS / "concepts.yaml", files)]
    if site_dir is not None and (site_dir / "concepts.yaml").is_file():
        site_doc = _read_yaml(site_dir / "concepts.yaml", files)
        if site_doc.get("extends") == "default":
            concept_docs.insert(0, site_doc)
        else:
            concept_docs = [site_doc]
    concepts = build_concept_map(concept_docs)
    lexicon = _lexicon(site_dir, files, concepts)
    terminology = None
    if settings.terminology:
        from fhir_spine.terminology import apply

        terminology = apply(concepts, settings.terminology,
                            optional=settings.terminology_optional,
                            max_expansion=settings.terminology_max_expansion)
    questionnaires = _questionnaire_map(site_dir, files, concepts)

    views: dict[str, dict[str, Any]] = {}
    view_files: dict[str, str] = {}
    for folder in (DEFAULT_MAPPINGS / "views", site_dir / "views" if site_dir else None):
        if folder is None or not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.json")):
            data = path.read_bytes()
            try:
                view = json.loads(data)
            except json.JSONDecodeError as exc:
                raise ConfigError(
                    f"{path}: not valid JSON: {exc.msg} at line {exc.lineno}") from None
            resource = view.get("resource") if isinstance(view, dict) else None
            if not isinstance(resource, str):
                raise ConfigError(f"{path}: a ViewDefinition needs a `resource`")
            views[resource] = view
            view_files[resource] = str(path)
            files.append(MappingFile(_shown(path), hashlib.sha256(data).hexdigest()))
    check_views(views, view_files)
    return Mappings(settings, concepts, views, files, view_files, questionnaires, terminology,
                    lexicon)


def check_views(views: dict[str, dict[str, Any]], view_files: dict[str, str]) -> None:
    """Every view in use (default or site) against the handler registry, before anything
    is read: a missing or mistyped column, a view no handler reads, or a FHIRPath that
    does not compile is a `ConfigError` (exit 3) naming the file and the column."""
    from fhir_spine.handlers import check_view  # the registry compiles views: load it late

    for rtype in sorted(views):
        check_view(view_files.get(rtype, f"<{rtype} view>"), views[rtype])


def _lexicon(site_dir: Path | None, files: list[MappingFile], concepts: ConceptMap
             ) -> Lexicon:
    """lexicon.yaml: the default, a site's merged over it (`extends: default`, its entries
    first) or replacing it, as for concepts.yaml; each file recorded with its hash."""
    def read(path: Path) -> Lexicon:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
        parsed = parse_lexicon(path, data, concepts.element_of)
        files.append(MappingFile(_shown(path), hashlib.sha256(data).hexdigest()))
        return parsed

    default = read(DEFAULT_MAPPINGS / "lexicon.yaml")
    site = None
    if site_dir is not None and (site_dir / "lexicon.yaml").is_file():
        site = read(site_dir / "lexicon.yaml")
    return merged_lexicon(site, default)


def _questionnaire_map(site_dir: Path | None, files: list[MappingFile],
                       concepts: ConceptMap) -> QuestionnaireMap:
    """questionnaires.yaml: the default, a site's merged over it (`extends: default`) or
    replacing it, as for concepts.yaml."""
    docs = []
    if (DEFAULT_MAPPINGS / "questionnaires.yaml").is_file():
        docs.append(_read_yaml(DEFAULT_MAPPINGS / "questionnaires.yaml", files))
    if site_dir is not None and (site_dir / "questionnaires.yaml").is_file():
        site_doc = _read_yaml(site_dir / "questionnaires.yaml", files)
        docs = [site_doc, *docs] if site_doc.get("extends") == "default" else [site_doc]
    from fhir_spine.pathway.vocabulary import MEASURES

    measures = set(MEASURES) | {name for name, element in concepts.element_of.items()
                              if element == "observation"}
    return build_questionnaire_map(docs, measures)
