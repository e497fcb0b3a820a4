"""`fhir-spine codes OUT_DIR [--write-site-mappings DIR]`: the review loop of codes.csv."""

from __future__ import annotations

import argparse
from pathlib import Path

THERAPY_CONCEPTS = frozenset({
    "radiotherapy", "systemic-therapy", "systemic-therapy-procedure", "oncologic-resection",
    "separation-surgery", "cancer-related-surgery"})


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "codes", help="list unmapped codes with suggestions; draft a site concepts.yaml",
        description="Read the codes table of an extract (OUT_DIR/codes.parquet or "
        "codes.csv) and list the unmapped codes with a suggested concept, most affected "
        "first (affected: the screened patients whose classification - included, exclusion "
        "reasons, strategy - changes when the pathway is rerun with the code so mapped). "
        "With --write-site-mappings DIR, write DIR/concepts.yaml (extends: default) "
        "of the suggestions, each commented with its display, counts and rule, for a person "
        "to review and then use with --mappings DIR.",
    )
    p.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="output folder of extract")
    p.add_argument("--write-site-mappings", type=Path, metavar="DIR",
                   help="write a draft site concepts.yaml into DIR (refused if one exists)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import pandas as pd

    from fhir_spine import review
    from fhir_spine.errors import ExitCode, UsageError

    out: Path = args.out_dir
    if (out / "codes.parquet").is_file():
        codes = pd.read_parquet(out / "codes.parquet")
    elif (out / "codes.csv").is_file():
        codes = pd.read_csv(out / "codes.csv", dtype={"code": str})
    else:
        raise UsageError(f"{out}: no codes.parquet or codes.csv (an extract output folder?)")
    if "suggested_concept" not in codes:
        raise UsageError(f"{out}: codes table without suggested_concept (older fhir-spine)")
    therapy = codes[codes["concept"].fillna("").str.split(";").map(
        lambda cs: bool(set(cs) & THERAPY_CONCEPTS))]
    if len(therapy):
        print("therapy codes mapped (code, display, concept, resources):")
        for r in therapy.sort_values(["concept", "resources"], ascending=[True, False],
                                     kind="stable").itertuples(index=False):
            print(f"  {r.system}|{r.code}\t{r.display}\t{r.concept}\t{r.resources}")
    hints = codes[codes["suggested_concept"].notna()].sort_values(
        ["patients_affected", "resources"], ascending=False, kind="stable")
    print(f"{len(hints)} unmapped code(s) with a suggestion (code, display, suggested "
          "concept, counts):")
    for r in hints.itertuples(index=False):
        print(f"  {r.resource_type}\t{r.system}|{r.code}\t{r.display}\t-> {r.suggested_concept}"
              f"\tresources {r.resources}, patients {r.patients}, "
              f"classification changed {r.patients_affected}")
    if args.write_site_mappings is not None:
        folder: Path = args.write_site_mappings
        target = folder / "concepts.yaml"
        if target.exists():
            raise UsageError(f"{target} exists: refusing to overwrite a site mapping")
        folder.mkdir(parents=True, exist_ok=True)
        target.write_text(review.site_mappings(codes), encoding="utf-8")
        print(f"wrote {target}")
    return int(ExitCode.OK)
