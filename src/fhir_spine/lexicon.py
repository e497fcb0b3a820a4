"""The display-text lexicon of the review loop: `lexicon.yaml` -> rules -> a suggestion.

A lexicon file maps element groups (`procedure`, `medication`, `finding`, `report`,
`observation`: the concept map elements whose codes may be suggested, review.group_of) to
concepts, each with a list of terms. A term matches a display that has it at the start of
a word, case-insensitively; `a & b` needs both, `a & !b` a without b. Within a group the
first concept with a matching term wins.

The default is `fhir_spine/mappings/lexicon.yaml`. A site's `--mappings DIR/lexicon.yaml`
with `extends: default` is merged over it, its entries first (as concepts.yaml); without
it, it replaces the default. Every mistake in a file is one `ConfigError` (exit 3) naming
the file and line: `parse` reads the YAML node tree, so each entry keeps its position.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from fhir_spine.errors import ConfigError

GROUPS = ("procedure", "medication", "finding", "report", "observation")


@dataclass(frozen=True)
class Rule:
    group: str
    concept: str
    term: str
    pattern: re.Pattern[str]


@dataclass(frozen=True)
class Lexicon:
    """Rules per group, in precedence order."""

    rules: Mapping[str, tuple[Rule, ...]] = field(default_factory=dict)
    extends_default: bool = False

    def suggest(self, group: str, display: str) -> tuple[str, str] | None:
        """(concept, rule text) of the first rule of `group` matching `display`."""
        text = display.lower()
        for rule in self.rules.get(group, ()):
            if rule.pattern.match(text):
                return rule.concept, f"lexicon {group}: display contains {rule.term!r}"
        return None

    def concepts(self) -> set[tuple[str, str]]:
        """(group, concept) of every rule."""
        return {(r.group, r.concept) for rules in self.rules.values() for r in rules}


def merged(site: Lexicon | None, default: Lexicon) -> Lexicon:
    """The lexicon in force: a site's over the default (`extends: default`, its rules
    first), a site's alone, or the default."""
    if site is None:
        return default
    if not site.extends_default:
        return site
    groups = dict.fromkeys([*site.rules, *default.rules])
    return Lexicon({g: (*site.rules.get(g, ()), *default.rules.get(g, ())) for g in groups},
                   extends_default=True)


def term_pattern(term: str) -> re.Pattern[str]:
    """`word` at a word start; `a & b` both; `a & !b` a without b (a lookahead regex)."""
    parts = [p.strip().lower() for p in term.split("&")]
    ahead = "".join(
        ("(?!.*" if p.startswith("!") else "(?=.*") + r"(?<![a-z0-9])"
        + re.escape(p.lstrip("!").strip()) + ")" for p in parts)
    return re.compile("^" + ahead, re.DOTALL)


def parse(path: Path | str, data: bytes | str,
          element_of: Mapping[str, str] | None = None) -> Lexicon:
    """A lexicon file's text -> `Lexicon`; `ConfigError` `file:line: lexicon: problem`.

    With `element_of` (concept -> element of the concept map), a concept the map defines
    for another element than the group it is listed under is an error: its suggestion
    would draft a site mapping that does not load."""
    try:
        root = yaml.compose(data)
    except yaml.YAMLError as exc:
        from fhir_spine.settings import yaml_error_text

        raise ConfigError(yaml_error_text(Path(path), exc)) from None

    def fail(node: yaml.Node | None, problem: str) -> ConfigError:
        line = f":{node.start_mark.line + 1}" if node is not None else ""
        return ConfigError(f"{path}{line}: lexicon: {problem}")

    if root is None:
        return Lexicon()
    if not isinstance(root, yaml.MappingNode):
        raise fail(root, "expected a mapping of groups at the top level")
    rules: dict[str, list[Rule]] = {}
    extends = False
    for key, value in root.value:
        name = _scalar(key)
        if name == "extends":
            target = _scalar(value)
            if target not in ("default", None, "null", "~", ""):
                raise fail(value, f"extends: {target!r}; expected `default` or nothing")
            extends = target == "default"
            continue
        if name not in GROUPS:
            raise fail(key, f"unknown group {name!r}; expected one of {', '.join(GROUPS)}")
        if isinstance(value, yaml.ScalarNode) and _scalar(value) in (None, "", "null", "~"):
            continue
        if not isinstance(value, yaml.MappingNode):
            raise fail(value, f"group {name!r} must map concepts to lists of terms")
        for ckey, terms in value.value:
            concept = _scalar(ckey)
            if not concept:
                raise fail(ckey, f"group {name!r}: a concept name must be text")
            known = (element_of or {}).get(concept)
            if known is not None and known != name:
                raise fail(ckey, f"concept {concept!r} has element {known} in concepts.yaml, "
                                 f"not {name}")
            if not isinstance(terms, yaml.SequenceNode):
                raise fail(terms, f"{name}.{concept}: expected a list of terms")
            for tnode in terms.value:
                rules.setdefault(name, []).append(_rule(tnode, name, concept, fail))
    return Lexicon({g: tuple(r) for g, r in rules.items()}, extends_default=extends)


def _rule(node: yaml.Node, group: str, concept: str,
          fail: Callable[[yaml.Node | None, str], ConfigError]) -> Rule:
    term = _scalar(node) if isinstance(node, yaml.ScalarNode) else None
    parts = [p.strip().lstrip("!").strip() for p in (term or "").split("&")]
    if not term or not all(parts):
        raise fail(node, f"{group}.{concept}: term {term!r} is not text like "
                         "`word`, `a & b` or `a & !b`")
    return Rule(group, concept, term, term_pattern(term))


def _scalar(node: yaml.Node) -> str | None:
    if not isinstance(node, yaml.ScalarNode):
        return None
    return str(node.value)

