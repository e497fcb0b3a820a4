"""Log lines under --pseudonymise: what happened stays, who and where does not.

That error lines are scrubbed too (unless --debug) is in tests/test_deid.py."""

from __future__ import annotations

from fhir_spine.log_scrub import LogScrubber, scrub_log_text


def test_log_lines_are_scrubbed():
    text = scrub_log_text("reading /data/Smith_John_MRN4455667/x.json; GET "
                          "http://h/fhir/Patient?_id=abc: server message: Jo Smith 1960-01-02;"
                          " Patient/abc and 'Jo' on 2024-01-02, 12 resources, "
                          "pat-0123456789abcdef0123", known={"abc"})
    assert text == ("reading [path] GET [url]: server message: [withheld]")
    text = scrub_log_text("3 left the cohort: Patient/ab1, MRN4455667 'Jo' 2024-01-02 in "
                          "4.0.1 pat-0123456789abcdef0123")
    assert text == ("3 left the cohort: Patient/[id], [id] '[redacted]' [date] in 4.0.1 "
                    "pat-0123456789abcdef0123")


def test_log_filter_treats_string_digits_as_ids_and_numbers_as_counts():
    import logging

    record = logging.LogRecord("x", logging.INFO, __file__, 1, "%d patient(s) left: %s",
                               (2, "1000, 1001"), None)
    record.fields = {"ids": ["1000"], "count": 3}
    LogScrubber().filter(record)
    assert record.getMessage() == "2 patient(s) left: [id], [id]"
    assert record.fields == {"ids": ["[id]"], "count": 3}
