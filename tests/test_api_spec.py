"""The contract documents are valid, and the schemas, examples and pydantic models agree."""

from __future__ import annotations

import json
import re
import shutil
import struct
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pydantic
import pytest
import yaml
from openapi_spec_validator import validate as validate_openapi
from openapi_spec_validator.readers import read_from_filename

from halo_client import messages
from halo_client.frame import decode_frame

SPEC = Path(__file__).resolve().parent.parent / "api_spec"
SCHEMAS = {p.stem: json.loads(p.read_text()) for p in sorted((SPEC / "schemas").glob("*.json"))}
EXAMPLES = sorted((SPEC / "examples").glob("*.json"))
MODELS: dict[str, type[pydantic.BaseModel]] = {
    "model_info": messages.ModelInfo,
    "tokenize_request": messages.TokenizeRequest,
    "tokenize_response": messages.TokenizeResponse,
    "detokenize_request": messages.DetokenizeRequest,
    "detokenize_response": messages.DetokenizeResponse,
    "error_response": messages.ErrorResponse,
    "generate_request": messages.GenerateRequest,
    "abort": messages.AbortMessage,
    "token": messages.TokenMessage,
    "done": messages.DoneMessage,
    "error": messages.ErrorMessage,
}


def test_openapi_document_is_valid() -> None:
    spec, base = read_from_filename(str(SPEC / "openapi.yaml"))
    validate_openapi(spec, base_uri=base)


def test_openapi_validator_follows_the_schema_files(tmp_path: Path) -> None:
    """A broken schema file breaks the OpenAPI document: the refs are really resolved."""
    copy = tmp_path / "api_spec"
    shutil.copytree(SPEC, copy)
    broken = json.loads((copy / "schemas" / "model_info.json").read_text())
    broken["properties"]["vocab_size"]["type"] = "no-such-type"
    (copy / "schemas" / "model_info.json").write_text(json.dumps(broken))
    spec, base = read_from_filename(str(copy / "openapi.yaml"))
    with pytest.raises(Exception, match="no-such-type"):
        validate_openapi(spec, base_uri=base)


def test_every_openapi_ref_names_an_existing_schema() -> None:
    text = (SPEC / "openapi.yaml").read_text()
    refs = set(re.findall(r"schemas/([a-z_]+)\.json", text))
    assert refs <= set(SCHEMAS)
    assert {"model_info", "tokenize_request", "tokenize_response", "detokenize_request",
            "detokenize_response", "error_response"} <= refs
    yaml.safe_load(text)


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_schemas_are_valid_2020_12(name: str) -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMAS[name])


def test_every_model_has_a_schema_and_every_schema_a_model() -> None:
    assert set(MODELS) == set(SCHEMAS)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_and_schema_have_the_same_fields(name: str) -> None:
    schema, model = SCHEMAS[name], MODELS[name]
    assert set(schema["properties"]) == set(model.model_fields)
    required = {f for f, info in model.model_fields.items() if info.is_required()}
    assert required <= set(schema["required"])
    for field, info in model.model_fields.items():
        default = schema["properties"][field].get("default")
        if default is not None and not info.is_required():
            assert info.get_default(call_default_factory=True) == default, field


def _schema_for(example: Path) -> str:
    return example.name.split(".")[0]


def test_every_schema_has_an_example() -> None:
    assert {_schema_for(e) for e in EXAMPLES if not e.name.startswith("frame.")} == set(SCHEMAS)


@pytest.mark.parametrize("example", [e for e in EXAMPLES if not e.name.startswith("frame.")],
                         ids=lambda p: p.name)
def test_example_validates_against_schema_and_model(example: Path) -> None:
    data = json.loads(example.read_text())
    name = _schema_for(example)
    jsonschema.Draft202012Validator(SCHEMAS[name]).validate(data)
    model = MODELS[name].model_validate(data)
    # round trip: what the client would send or accept is the example itself
    assert model.model_dump(mode="json", exclude_unset=True) == data


def test_half_emoji_pieces_join_into_the_text() -> None:
    tokens = json.loads((SPEC / "examples" / "tokenize_response.half_emoji.json").read_text())
    text = json.loads((SPEC / "examples" / "detokenize_response.basic.json").read_text())["text"]
    model = messages.TokenizeResponse.model_validate(tokens)
    pieces = [t.piece for t in model.tokens]
    assert b"".join(pieces) == text.encode("utf-8")
    with pytest.raises(UnicodeDecodeError):
        pieces[1].decode("utf-8")  # half a character on its own


BAD: list[tuple[str, dict[str, Any]]] = [
    ("generate_request", {"input_ids": [1], "max_lenght": 3}),
    ("generate_request", {"input_ids": []}),
    ("generate_request", {"input_ids": [1], "max_length": "3"}),
    ("generate_request", {"input_ids": [1], "top_p": 0}),
    ("generate_request", {"input_ids": [-1]}),
    ("generate_request", {"input_ids": [1], "attention_dtype": "bfloat16"}),
    ("token", {"type": "token", "index": 0, "token_id": 1, "piece": "not base64!"}),
    ("token", {"type": "token", "index": -1, "token_id": 1, "piece": "AA=="}),
    ("done", {"type": "done", "finish_reason": "timeout", "token_count": 1, "prompt_tokens": 1,
              "timings": {"prompt_ms": 1, "generation_ms": 1, "tokens_per_second": 1}}),
    ("error", {"type": "error", "code": "TEAPOT", "message": "x"}),
    ("error_response", {"error": {"code": "BUSY"}}),
    ("tokenize_request", {"text": 3}),
    ("detokenize_request", {"token_ids": [1.5]}),
]


@pytest.mark.parametrize(("name", "data"), BAD, ids=[f"{n}-{i}" for i, (n, _) in enumerate(BAD)])
def test_invalid_documents_are_rejected_by_schema_and_model(name: str, data: dict[str, Any]) -> None:
    with pytest.raises(jsonschema.ValidationError):
        validator = jsonschema.Draft202012Validator(SCHEMAS[name], format_checker=jsonschema.FormatChecker())
        validator.validate(data)
    with pytest.raises(pydantic.ValidationError):
        MODELS[name].model_validate(data)


def test_hex_frame_example_decodes_to_its_json() -> None:
    lines = (SPEC / "examples" / "frame.small.hex").read_text().splitlines()
    blob = b"".join(bytes.fromhex(line[10:57]) for line in lines if not line.startswith("#"))
    described = json.loads((SPEC / "examples" / "frame.small.json").read_text())
    assert len(blob) == described["total_bytes"]
    magic, version, header_size, index, dtype, _r1, layers, heads, ctx, _r2 = struct.unpack_from(
        "<4sHHIHHIIII", blob)
    assert (magic.decode(), version, header_size, index, layers, heads, ctx) == (
        described["magic"], described["version"], described["header_size"], described["token_index"],
        described["layers"], described["heads"], described["ctx"])
    assert dtype == {"float32": 1, "float16": 2}[described["dtype"]]
    values = np.frombuffer(blob, "<f4", offset=32).reshape(layers, heads, ctx)
    np.testing.assert_array_equal(values, np.asarray(described["values"], np.float32))
    np.testing.assert_allclose(values.sum(axis=-1), 1.0, atol=1e-6)
    # and the client's codec reads it the same way
    frame = decode_frame(blob)
    np.testing.assert_array_equal(frame.values, values)
