"""The one scrubber (issue 15): every form of a secret, every place it can leave by."""

from __future__ import annotations

import base64
import io
from urllib.parse import quote, quote_plus

import pandas as pd
import pytest

from fhir_spine import redact

SECRET = "tok+en/with=sl4sh+plus=="


@pytest.fixture(autouse=True)
def _registry():
    redact.forget_secrets()
    redact.register_secret(SECRET)
    yield
    redact.forget_secrets()


@pytest.mark.parametrize("form", [
    SECRET, quote(SECRET, safe=""), quote(SECRET, safe="").lower().replace("tok", "tok"),
    quote_plus(SECRET), quote(SECRET, safe="/"),
    base64.b64encode(SECRET.encode()).decode(),
    base64.urlsafe_b64encode(SECRET.encode()).decode().rstrip("="),
])
def test_every_form_is_masked(form):
    text = f"the server says: {form} is not valid"
    assert redact.scrub(text) == "the server says: *** is not valid"


def test_lowercase_percent_escapes():
    lower = quote(SECRET, safe="").replace("%2B", "%2b").replace("%2F", "%2f")
    assert lower not in redact.scrub(f"x {lower} y")


def test_redact_url_does_not_re_encode_a_raw_token_out_of_sight():
    for url in (f"https://h/fhir/P?_getpages=1&access_token={quote(SECRET, safe='')}&x={SECRET}",
                f"https://h/fhir/P?x={quote_plus(SECRET)}&token=1",
                f"https://h/fhir/P?x={SECRET}"):
        shown = redact.redact_url(url)
        for form in redact.secret_forms(SECRET):
            assert form not in shown, (url, shown)


def test_json_and_frames_are_scrubbed():
    data = {"a": [SECRET, {"b": f"x {quote(SECRET, safe='')}"}], SECRET: 1}
    assert SECRET not in str(redact.scrub_json(data))
    df = pd.DataFrame({"message": [f"oops {SECRET}", "fine"], "n": [1, 2]})
    out = redact.scrub_frame(df)
    assert out["message"].tolist() == ["oops ***", "fine"]
    clean = pd.DataFrame({"message": ["fine"]})
    assert redact.scrub_frame(clean) is clean


def test_stream_scrubs_even_a_secret_split_over_writes():
    sink = io.StringIO()
    stream = redact.ScrubbingStream(sink)  # type: ignore[arg-type]
    stream.write("error: " + SECRET[:5])
    stream.write(SECRET[5:] + " end\n")
    stream.write("tail " + SECRET)
    stream.flush()
    assert SECRET not in sink.getvalue()
    assert sink.getvalue() == "error: *** end\ntail ***"
