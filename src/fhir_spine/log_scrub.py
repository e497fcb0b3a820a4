"""Log and error lines under `--pseudonymise`: scrubbed before any handler writes them.

A de-identified dataset is worth little if the run's log (kept by a scheduler, mailed
on failure) names the patients, files and servers it read. Unless `--debug`, every
record a handler emits, ours or a library's, and the final error line, go through
`scrub_log_text`: what happened stays readable, who and where does not.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from typing import Any

from fhir_spine.known_ids import DATE_LIKE, DATE_MARK, QUOTED, REDACTED
from fhir_spine.pseudonymise import PSEUDONYM_TEXT

_LOG_SERVER_TEXT = re.compile(r"(server message[^:]{0,40}: ).*", re.IGNORECASE | re.DOTALL)
_LOG_URL = re.compile(r"\b[a-z][a-z0-9+.\-]*://[^\s'\"<>]+", re.IGNORECASE)
_LOG_REFERENCE = re.compile(r"\b([A-Z][A-Za-z]+)/(?!\[)[^\s,;:'\")\]]+")
_LOG_PATH = re.compile(r"(?<![\w\[])(?:[^\s'\"]*/[^\s'\"]*|[^\s'\"/]+\.(?:ndjson|jsonl|json|gz"
                       r"|csv|txt|yaml|yml|xml)(?::[0-9]+|#entry\[[0-9]+\])*)(?![\w])")
_LOG_MIXED = re.compile(r"(?<![\w\-.\[])(?=[\w.\-]*[A-Za-z])(?=[\w.\-]*[0-9])[\w.\-]{3,}"
                        r"(?![\w\-.\]])")
_LOG_REFERENCE_DONE = re.compile(r"[A-Z][A-Za-z]+/\[id\][,;:.)]*")
_LOG_KEEP = re.compile(r"(?:" + PSEUDONYM_TEXT + r"|src-[0-9a-f]{20}|sha256|SHA-256|UTF-8"
                       r"|HTTP/[0-9.]+|R4B?|[0-9]+(?:\.[0-9]+)*(?:s|ms|MB|KB|GB|MiB|KiB)?)")


def scrub_log_text(text: str, known: Iterable[str] = ()) -> str:
    """A log line under --pseudonymise (without --debug): server text withheld, URLs, file
    paths and names, references' ids, quoted values, dates, known ids and every token
    that mixes letters and digits (how record ids look) replaced. Counts, words, resource
    type names, pseudonyms and versions stay, so the line still says what happened."""
    text = _LOG_SERVER_TEXT.sub(lambda m: m.group(1) + "[withheld]", text)
    for value in sorted((k for k in known if k), key=len, reverse=True):
        if value in text:
            text = re.sub(r"(?<![A-Za-z0-9])" + re.escape(value) + r"(?![A-Za-z0-9])",
                          "[id]", text)
    text = _LOG_URL.sub(lambda m: "[url]" + m.group()[len(m.group().rstrip(":,;.)")):],
                        text)
    text = QUOTED.sub(lambda m: f"{m.group()[0]}{REDACTED}{m.group()[0]}", text)
    text = _LOG_REFERENCE.sub(lambda m: f"{m.group(1)}/[id]", text)
    text = _LOG_PATH.sub(lambda m: m.group() if _LOG_KEEP.fullmatch(m.group())
                         or _LOG_REFERENCE_DONE.fullmatch(m.group()) else "[path]", text)
    text = DATE_LIKE.sub(DATE_MARK, text)
    return _LOG_MIXED.sub(lambda m: m.group() if _LOG_KEEP.fullmatch(m.group()) else "[id]",
                          text)


_DIGIT_IDS = re.compile(r"[0-9]+(?:\s*,\s*[0-9]+)*")


class LogScrubber(logging.Filter):
    """`scrub_log_text` on every record a handler emits, ours or a library's.

    String arguments that are all digits (or a list of such) are ids (counts are passed as
    numbers), so they become `[id]`; the structured fields of JSON lines are scrubbed the
    same way."""

    def __init__(self, known: Iterable[str] = ()) -> None:
        super().__init__()
        self.known: set[str] = {k for k in known if k}

    def _arg(self, value: Any) -> Any:
        if isinstance(value, bool | int | float):
            return value
        text = str(value)
        if _DIGIT_IDS.fullmatch(text):
            return re.sub(r"[0-9]+", "[id]", text)
        return scrub_log_text(text, self.known)

    def _field(self, value: Any) -> Any:
        if isinstance(value, Mapping):
            return {k: self._field(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._field(v) for v in value]
        if isinstance(value, str):
            return self._arg(value)
        return value

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            if isinstance(record.args, tuple) and record.args:
                message = str(record.msg) % tuple(self._arg(a) for a in record.args)
            else:
                message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken record must still not leak or crash
            message = str(record.msg)
        record.msg, record.args = scrub_log_text(message, self.known), None
        fields = getattr(record, "fields", None)
        if isinstance(fields, Mapping):
            record.fields = self._field(fields)
        record.exc_info, record.exc_text = None, None
        return True


def install_log_scrubbing(known: Iterable[str] = ()) -> LogScrubber:
    """Attach a `LogScrubber` to the root logger's handlers (before any other filter, so
    it sees the record's arguments)."""
    scrubber = LogScrubber(known)
    for handler in logging.getLogger().handlers:
        handler.filters.insert(0, scrubber)
    return scrubber
