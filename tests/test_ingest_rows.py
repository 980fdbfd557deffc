"""The row conversion's hand-written pieces against protobuf's own reference implementations."""

from __future__ import annotations

import json

import pytest
from google.protobuf import json_format

from llmmeter_ingest.rows import to_rows
from llmmeter_ingest.validation import Rejected

from records import record

BODIES = [
    {"messages": [{"role": "user", "content": "héllo ✓"}], "temperature": 0.7, "n": 2, "stream": True,
     "stop": None, "tools": [], "meta": {}, "big": 12345678901234, "neg": -3.5e-9},
    ["a", 1, 2.5, False, None, [[]], {"x": {"y": [1, {"z": "w"}]}}],
    "just a string",
    42,
]


@pytest.mark.parametrize("body", BODIES)
def test_payload_json_matches_json_format(body) -> None:
    rec = record()
    json_format.ParseDict(body, rec.payload.request)
    json_format.ParseDict({"ok": body}, rec.payload.response)
    _, payload = to_rows(rec, True)
    assert payload is not None
    assert json.loads(payload[2]) == json.loads(json_format.MessageToJson(rec.payload.request))
    assert json.loads(payload[3]) == json.loads(json_format.MessageToJson(rec.payload.response))


def test_payload_without_response_and_nonfinite_numbers() -> None:
    rec = record()
    rec.payload.request.string_value = "only the request"
    _, payload = to_rows(rec, True)
    assert payload is not None and payload[2] == '"only the request"' and payload[3] is None
    rec.payload.request.struct_value.fields["x"].number_value = float("nan")
    with pytest.raises(Rejected) as err:
        to_rows(rec, True)
    assert err.value.field == "payload"


def test_maps_become_json_objects() -> None:
    rec = record()
    rec.metadata.update({"tenant": "acme", "env": "prod"})
    rec.cost_breakdown.update({"input": 0.25, "output": 0.75})
    rec.cost = 1.0
    row, _ = to_rows(rec, True)
    assert json.loads(row[33]) == {"input": 0.25, "output": 0.75}
    assert json.loads(row[37]) == {"tenant": "acme", "env": "prod"}
    empty, _ = to_rows(record(), True)
    assert empty[37] == "{}"
