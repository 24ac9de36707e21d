"""The contract documents in api_spec/ are valid, and the schemas, examples and pydantic models agree.

- openapi.yaml passes openapi-spec-validator, its refs resolve, its components are the schema files;
- every schema passes the draft 2020-12 meta-schema and has the constraints of its pydantic model;
- every example validates against its schema and its model, and round-trips through the model;
- invalid documents are rejected by both the schema and the model;
- the hex frames decode, with struct and numpy only, to their JSON descriptions.

The frame codec (halo_client.frame) is deliberately not used: the frame examples are checked
against the byte layout of websocket.md itself.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import struct
import typing
from collections.abc import Iterator
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

SPEC = Path(__file__).resolve().parent.parent / "api_spec"
SCHEMA_DIR = SPEC / "schemas"
EXAMPLE_DIR = SPEC / "examples"
SCHEMAS: dict[str, dict[str, Any]] = {
    p.stem: json.loads(p.read_text(encoding="utf-8")) for p in sorted(SCHEMA_DIR.glob("*.json"))
}
OPENAPI: dict[str, Any] = yaml.safe_load((SPEC / "openapi.yaml").read_text(encoding="utf-8"))
EXAMPLES = sorted(p for p in EXAMPLE_DIR.glob("*.json") if not p.name.startswith("frame."))
FRAMES = sorted(EXAMPLE_DIR.glob("frame.*.hex"))

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

#: contract.md: every error code and the HTTP status a REST answer (or a refused upgrade) carries
STATUS = {
    "INVALID_REQUEST": 400, "INVALID_TOKEN": 400, "CONTEXT_OVERFLOW": 400, "UNAUTHORIZED": 401,
    "ORIGIN_NOT_ALLOWED": 403, "HOST_NOT_ALLOWED": 403, "NOT_FOUND": 404, "PAYLOAD_TOO_LARGE": 413, "INTERNAL": 500,
    "BUSY": 503, "ATTENTION_UNAVAILABLE": None,  # only ever a WebSocket error message
}
FRAME_HEADER = "<4sHHIHHIIII"
DTYPES = {1: ("float32", "<f4", 1e-3), 2: ("float16", "<f2", 1e-2)}
LAYOUTS = ("full", "layer_stats", "model_stats")  # by their code at offset 14


def _validator(name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(SCHEMAS[name], format_checker=jsonschema.FormatChecker())


def _schema_of(example: Path) -> str:
    return example.name.split(".")[0]


def _walk(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    yield path, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{path}/{i}")


# ---------------------------------------------------------------------------------- OpenAPI


def test_openapi_document_is_valid() -> None:
    spec, base = read_from_filename(str(SPEC / "openapi.yaml"))
    assert spec["openapi"].startswith("3.1")
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


def test_openapi_components_are_the_schema_files() -> None:
    """One definition per message: each component is a $ref to its schema file, nothing inline."""
    components = OPENAPI["components"]["schemas"]
    by_file = {}
    for component, node in components.items():
        assert set(node) == {"$ref"}, f"{component} must only refer to its schema file"
        match = re.fullmatch(r"schemas/([a-z_]+)\.json", node["$ref"])
        assert match, node["$ref"]
        by_file[match.group(1)] = component
    assert set(by_file) == set(SCHEMAS)
    for name, component in by_file.items():
        # component name == schema title == pydantic class name
        assert SCHEMAS[name]["title"] == component == MODELS[name].__name__


def test_every_ref_in_openapi_and_the_schemas_resolves() -> None:
    def resolve(document: dict[str, Any], base: Path, ref: str) -> Any:
        target, _, pointer = ref.partition("#")
        node: Any = document
        if target:
            file = (base / target).resolve()
            assert file.is_file(), f"{ref}: no file {file}"
            node = json.loads(file.read_text())
        for part in filter(None, pointer.split("/")):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        return node

    count = 0
    documents = [(OPENAPI, SPEC)] + [(schema, SCHEMA_DIR) for schema in SCHEMAS.values()]
    for document, base in documents:
        for path, node in _walk(document):
            if isinstance(node, dict) and isinstance(node.get("$ref"), str):
                assert resolve(document, base, node["$ref"]) is not None, path
                count += 1
    assert count >= 20


def _operations() -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in OPENAPI["paths"].items():
        for method, operation in item.items():
            yield path, method, operation


def test_openapi_documents_every_endpoint_and_status() -> None:
    expected = {
        ("/api/v1/model/info", "get"): {"200", "401", "403", "404", "500"},
        ("/api/v1/tokenize", "post"): {"200", "400", "401", "403", "404", "413", "500"},
        ("/api/v1/detokenize", "post"): {"200", "400", "401", "403", "404", "413", "500"},
        ("/api/v1/generate/stream", "get"): {"101", "400", "401", "403"},
    }
    found = {(path, method): set(op["responses"]) for path, method, op in _operations()}
    assert found == expected


def _response(node: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in node:
        found: dict[str, Any] = OPENAPI["components"]["responses"][node["$ref"].rsplit("/", 1)[1]]
        return found
    return node


def _schema_name(media: dict[str, Any]) -> str:
    component = media["schema"]["$ref"].rsplit("/", 1)[1]
    ref: str = OPENAPI["components"]["schemas"][component]["$ref"]
    return Path(ref).stem


def test_openapi_error_responses_use_the_error_body_and_their_status() -> None:
    for path, method, operation in _operations():
        for status, node in operation["responses"].items():
            if int(status) < 400:
                continue
            media = _response(node)["content"]["application/json"]
            assert _schema_name(media) == "error_response", (path, method, status)
            assert media.get("examples"), f"{path} {method} {status}: no example"
            for example in media["examples"].values():
                code = json.loads((SPEC / example["externalValue"]).read_text())["error"]["code"]
                assert STATUS[code] == int(status), (path, method, status, code)


def test_openapi_says_the_rest_answers_are_readable_cross_origin() -> None:
    """Every REST answer carries `Access-Control-Allow-Origin: *` (as KoboldCPP's own endpoints'
    do; the conformance suite checks the servers), and the spec says what that means."""
    header = OPENAPI["components"]["headers"]["AccessControlAllowOrigin"]
    assert header["schema"] == {"const": "*"}
    for path, method, operation in _operations():
        if path == "/api/v1/generate/stream":
            continue
        for status, node in operation["responses"].items():
            declared = _response(node).get("headers", {}).get("Access-Control-Allow-Origin")
            assert declared == {"$ref": "#/components/headers/AccessControlAllowOrigin"}, (path, method, status)
    security = OPENAPI["info"]["description"]
    assert "Access-Control-Allow-Origin: *" in security and "without a password" in security
    assert "Access-Control-Allow-Origin: *" in (SPEC / "websocket.md").read_text()


def test_openapi_examples_exist_and_fit_their_schema() -> None:
    seen = 0
    for path, media in _walk(OPENAPI):
        if not (isinstance(media, dict) and "schema" in media and "examples" in media):
            continue
        name = _schema_name(media)
        for example in media["examples"].values():
            file = SPEC / example["externalValue"]
            assert _schema_of(file) == name, (path, file.name)
            _validator(name).validate(json.loads(file.read_text()))
            seen += 1
    assert seen >= 10


def test_openapi_security_is_kobold_password_as_bearer() -> None:
    scheme = OPENAPI["components"]["securitySchemes"]["bearerAuth"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    assert "--password" in scheme["description"]
    # a server without a password needs no Authorization: security is optional
    assert {} in OPENAPI["security"] and {"bearerAuth": []} in OPENAPI["security"]


def test_openapi_speaks_to_koboldcpp_users() -> None:
    text = OPENAPI["info"]["description"]
    assert "KoboldCPP" in text and "/api/v1" in text and "websocket.md" in text
    for name in ("max_length", "temperature", "top_p", "top_k", "rep_pen", "rep_pen_range",
                 "sampler_seed"):
        assert f"`{name}`" in text
    # the table of error codes in the description is the contract's, every code once
    rows = dict(re.findall(r"^\| `([A-Z_]+)` \| (\d+|—) \|", text, re.M))
    assert {code: None if s == "—" else int(s) for code, s in rows.items()} == STATUS


# ---------------------------------------------------------------------------------- schemas


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_schema_is_valid_2020_12(name: str) -> None:
    schema = SCHEMAS[name]
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"].endswith(f"/schemas/{name}.json")
    for path, node in _walk(schema):
        if isinstance(node, dict) and node.get("type") == "object":
            assert node.get("additionalProperties") is False, f"{name}{path}: additionalProperties"


def test_every_model_has_a_schema_and_every_schema_a_model() -> None:
    assert set(MODELS) == set(SCHEMAS)
    models = {
        cls for cls in vars(messages).values()
        if isinstance(cls, type) and issubclass(cls, pydantic.BaseModel)
        and cls.__module__ == messages.__name__ and not cls.__name__.startswith("_")
    }
    nested = {messages.AttentionSupport, messages.TokenPiece, messages.ErrorDetail, messages.Timings}
    assert models == set(MODELS.values()) | nested


_KEEP = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minItems", "maxItems",
         "minLength", "maxLength", "uniqueItems", "const", "additionalProperties")


def _constraints(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """What a schema node accepts, in one normal form (pydantic's and ours spell it differently)."""
    if "$ref" in node:
        node = defs[node["$ref"].rsplit("/", 1)[1]]
    for key in ("anyOf", "oneOf"):
        if key in node:
            alternatives = [a for a in node[key] if a != {"type": "null"}]
            assert len(alternatives) == 1 and len(node[key]) == 2, node
            nullable = _constraints(alternatives[0], defs)
            nullable["type"] = nullable["type"] | {"null"}
            return nullable
    out: dict[str, Any] = {k: node[k] for k in _KEEP if k in node}
    types = node.get("type")
    if types is None:
        value = node["const"] if "const" in node else node["enum"][0]
        types = {str: "string", int: "integer", bool: "boolean"}[type(value)]
    out["type"] = {types} if isinstance(types, str) else set(types)
    if "enum" in node:
        out["enum"] = set(node["enum"])
    if "integer" in out["type"]:  # x < n is x <= n - 1 for integers
        if "exclusiveMaximum" in out:
            out["maximum"] = out.pop("exclusiveMaximum") - 1
        if "exclusiveMinimum" in out:
            out["minimum"] = out.pop("exclusiveMinimum") + 1
    if "properties" in node:
        out["properties"] = {k: _constraints(v, defs) for k, v in node["properties"].items()}
        out["required"] = set(node.get("required", ()))
    if "items" in node:
        out["items"] = _constraints(node["items"], defs)
    return out


@pytest.mark.parametrize("name", sorted(MODELS))
def test_schema_has_the_models_fields_types_and_constraints(name: str) -> None:
    generated = MODELS[name].model_json_schema()
    ours = _constraints(SCHEMAS[name], {})
    theirs = _constraints(generated, generated.get("$defs", {}))
    assert ours == theirs


def _model_of(annotation: Any) -> type[pydantic.BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def _check_defaults(model: type[pydantic.BaseModel], schema: dict[str, Any], where: str) -> int:
    checked = 0
    for field, info in model.model_fields.items():
        prop = schema["properties"][field]
        if info.is_required():
            assert "default" not in prop, f"{where}.{field}: the model requires it, the schema has a default"
        else:
            assert "default" in prop, f"{where}.{field}: the model has a default, the schema none"
            assert info.get_default(call_default_factory=True) == prop["default"], f"{where}.{field}"
            checked += 1
        nested = _model_of(info.annotation)
        if nested is not None:
            checked += _check_defaults(nested, prop.get("items", prop), f"{where}.{field}")
    return checked


def test_schema_defaults_are_the_models() -> None:
    checked = sum(_check_defaults(model, SCHEMAS[name], name) for name, model in MODELS.items())
    assert checked == 14  # the twelve optional fields of GenerateRequest, add_special_tokens, attention.layouts


def test_generate_request_defaults_are_the_contracts() -> None:
    defaults = messages.GenerateRequest(input_ids=[1]).model_dump(mode="json", exclude={"input_ids"})
    assert defaults == {
        "max_length": 100, "temperature": 0.7, "top_p": 0.92, "top_k": 100, "rep_pen": 1.1,
        "rep_pen_range": 320, "sampler_seed": -1, "stop_token_ids": [], "banned_token_ids": [],
        "return_attention": False, "attention_dtype": "float32", "attention_layout": "full",
    }
    assert messages.TokenizeRequest(text="").add_special_tokens is True


# --------------------------------------------------------------------------------- examples


def test_examples_are_named_after_their_schema() -> None:
    for file in EXAMPLE_DIR.iterdir():
        if file.name.startswith("frame."):
            assert file.suffix in (".hex", ".json"), file.name
            continue
        assert re.fullmatch(r"[a-z_]+\.[a-z0-9_]+\.json", file.name), file.name
        assert _schema_of(file) in SCHEMAS, file.name
    assert {_schema_of(e) for e in EXAMPLES} == set(SCHEMAS)


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_example_validates_against_schema_and_model(example: Path) -> None:
    text = example.read_text(encoding="utf-8")
    data = json.loads(text)
    name = _schema_of(example)
    _validator(name).validate(data)
    model = MODELS[name].model_validate(data)
    # what the client parses off the wire is the same
    assert MODELS[name].model_validate_json(text) == model
    # round trip: the model writes the example itself, field for field and value for value
    assert model.model_dump(mode="json", exclude_unset=True) == data
    # and with its defaults filled in, it is still a valid document of the schema
    _validator(name).validate(model.model_dump(mode="json"))


def test_half_emoji_pieces_join_into_the_text() -> None:
    tokens = json.loads((EXAMPLE_DIR / "tokenize_response.half_emoji.json").read_text(encoding="utf-8"))
    detok = json.loads((EXAMPLE_DIR / "detokenize_request.basic.json").read_text(encoding="utf-8"))
    text = json.loads((EXAMPLE_DIR / "detokenize_response.basic.json").read_text(encoding="utf-8"))["text"]
    model = messages.TokenizeResponse.model_validate(tokens)
    assert model.token_ids == [t.token_id for t in model.tokens] == detok["token_ids"]
    assert model.token_count == len(model.tokens)
    pieces = [t.piece for t in model.tokens]
    assert b"".join(pieces) == text.encode("utf-8")
    with pytest.raises(UnicodeDecodeError):
        pieces[1].decode("utf-8")  # half a character on its own
    token = messages.TokenMessage.model_validate_json((EXAMPLE_DIR / "token.half_emoji.json").read_text())
    assert token.piece == pieces[1] and token.token_id == model.tokens[1].token_id


def test_done_examples_are_consistent() -> None:
    for file in EXAMPLE_DIR.glob("done.*.json"):
        done = messages.DoneMessage.model_validate_json(file.read_text())
        assert file.name == f"done.{done.finish_reason}.json"
        t = done.timings
        assert t.tokens_per_second == pytest.approx(done.token_count / (t.generation_ms / 1000), abs=0.1)


# ------------------------------------------------------------------ invalid and edge documents

_TIMINGS = {"prompt_ms": 1, "generation_ms": 1, "tokens_per_second": 1}
_INFO = json.loads((EXAMPLE_DIR / "model_info.smollm2.json").read_text(encoding="utf-8"))

BAD: list[tuple[str, Any]] = [
    ("generate_request", {"input_ids": [1], "max_lenght": 3}),                  # unknown field (typo)
    ("generate_request", {"max_length": 3}),                                    # missing input_ids
    ("generate_request", {"input_ids": []}),
    ("generate_request", {"input_ids": [1], "max_length": "3"}),               # wrong type
    ("generate_request", {"input_ids": [1], "max_length": 0}),
    ("generate_request", {"input_ids": [1], "top_p": 0}),                      # out of range
    ("generate_request", {"input_ids": [1], "top_p": 1.5}),
    ("generate_request", {"input_ids": [1], "temperature": -0.1}),
    ("generate_request", {"input_ids": [1], "top_k": -1}),
    ("generate_request", {"input_ids": [1], "rep_pen": 0}),
    ("generate_request", {"input_ids": [1], "rep_pen_range": -1}),
    ("generate_request", {"input_ids": [1], "sampler_seed": -2}),
    ("generate_request", {"input_ids": [1], "sampler_seed": 2**32}),
    ("generate_request", {"input_ids": [-1]}),
    ("generate_request", {"input_ids": [2**31]}),
    ("generate_request", {"input_ids": [1], "stop_token_ids": [-5]}),
    ("generate_request", {"input_ids": [1], "return_attention": 1}),           # 1 is not true
    ("generate_request", {"input_ids": [1], "return_attention": "true"}),
    ("generate_request", {"input_ids": [1], "attention_dtype": "bfloat16"}),
    ("generate_request", [1, 2, 3]),                                            # not an object
    ("abort", {"type": "abort", "now": True}),
    ("abort", {"type": "stop"}),
    ("token", {"type": "token", "index": 0, "token_id": 1, "piece": "not base64!"}),
    ("token", {"type": "token", "index": 0, "token_id": 1, "piece": "SGk"}),   # unpadded
    ("token", {"type": "token", "index": 0, "token_id": 1, "piece": "SGk=="}),
    ("token", {"type": "token", "index": 0, "token_id": 1, "piece": "SGk=\n"}),
    ("token", {"type": "token", "index": 0, "token_id": 1, "piece": "-_8="}),  # URL-safe alphabet
    ("token", {"type": "token", "index": -1, "token_id": 1, "piece": "AA=="}),
    ("token", {"type": "done", "index": 0, "token_id": 1, "piece": "AA=="}),
    ("token", {"type": "token", "index": 0, "token_id": 1}),
    ("done", {"type": "done", "finish_reason": "timeout", "token_count": 1, "prompt_tokens": 1,
              "timings": _TIMINGS}),
    ("done", {"type": "done", "finish_reason": "eos", "token_count": 1, "prompt_tokens": 1,
              "timings": {**_TIMINGS, "total_ms": 2}}),                        # nested unknown field
    ("done", {"type": "done", "finish_reason": "eos", "token_count": 1, "prompt_tokens": 1,
              "timings": {**_TIMINGS, "prompt_ms": -1}}),
    ("error", {"type": "error", "code": "TEAPOT", "message": "x"}),
    ("error", {"type": "error", "code": "BUSY"}),
    ("error_response", {"error": {"code": "BUSY"}}),
    ("error_response", {"error": {"code": "BUSY", "message": "x", "status": 503}}),
    ("error_response", {"code": "BUSY", "message": "x"}),
    ("tokenize_request", {"text": 3}),
    ("tokenize_request", {"text": None}),
    ("tokenize_request", {"text": "x", "add_special_tokens": "yes"}),
    ("tokenize_request", {"text": "x", "add_bos": True}),
    ("tokenize_response", {"tokens": [{"token_id": 1, "piece": "AA==", "text": "x"}],
                           "token_ids": [1], "token_count": 1}),
    ("tokenize_response", {"tokens": [], "token_ids": [], "token_count": -1}),
    ("detokenize_request", {"token_ids": [1.5]}),
    ("detokenize_request", {"token_ids": "1 2 3"}),
    ("detokenize_response", {"text": "x", "tokens": 1}),
    ("model_info", {**_INFO, "n_ctx": 4096}),
    ("model_info", {**_INFO, "vocab_size": 0}),
    ("model_info", {**_INFO, "attention_api_version": 2}),
    ("model_info", {k: v for k, v in _INFO.items() if k != "eot_token_id"}),   # nullable, not optional
    ("model_info", {**_INFO, "attention": {"available": True}}),
    ("model_info", {**_INFO, "attention": {**_INFO["attention"], "dtypes": ["bfloat16"]}}),
]


@pytest.mark.parametrize(("name", "data"), BAD, ids=[f"{n}-{i}" for i, (n, _) in enumerate(BAD)])
def test_invalid_documents_are_rejected_by_schema_and_model(name: str, data: Any) -> None:
    with pytest.raises(jsonschema.ValidationError):
        _validator(name).validate(data)
    with pytest.raises(pydantic.ValidationError):
        MODELS[name].model_validate(data)
    with pytest.raises(pydantic.ValidationError):
        MODELS[name].model_validate_json(json.dumps(data))


EDGE: list[tuple[str, Any]] = [
    ("generate_request", {"input_ids": [0, 2**31 - 1], "max_length": 1, "temperature": 0, "top_p": 1,
                          "top_k": 0, "rep_pen": 0.5, "rep_pen_range": 0, "sampler_seed": 2**32 - 1}),
    ("generate_request", {"input_ids": [1], "sampler_seed": -1, "temperature": 2}),
    ("token", {"type": "token", "index": 0, "token_id": 0, "piece": ""}),
    ("token", {"type": "token", "index": 3, "token_id": 5, "piece": "+/+/"}),
    ("tokenize_response", {"tokens": [], "token_ids": [], "token_count": 0}),
    ("tokenize_request", {"text": ""}),
    ("detokenize_request", {"token_ids": []}),
    ("model_info", {**_INFO, "bos_token_id": None, "eos_token_id": None, "eot_token_id": None,
                    "chat_template": None, "rope_freq_base": 10000}),
    ("model_info", {**_INFO, "attention": {"available": False, "reason": "no", "dtypes": []}}),
]


@pytest.mark.parametrize(("name", "data"), EDGE, ids=[f"{n}-{i}" for i, (n, _) in enumerate(EDGE)])
def test_boundary_documents_are_accepted_by_schema_and_model(name: str, data: Any) -> None:
    _validator(name).validate(data)
    model = MODELS[name].model_validate_json(json.dumps(data))
    assert model.model_dump(mode="json", exclude_unset=True) == data


@pytest.mark.parametrize("text", ["", "AA==", "AAA=", "AAAA", "SGk=", "IPCf", "mIA=", "+/8=",
                                  "SGk", "SGk==", "S Gk=", "SGk=\n", "=AAA", "-_8=", "AA=A", "éé=="])
def test_schema_and_model_agree_on_what_base64_is(text: str) -> None:
    schema_ok = _validator("token").is_valid({"type": "token", "index": 0, "token_id": 1, "piece": text})
    try:
        messages.TokenPiece.model_validate({"token_id": 1, "piece": text})
        model_ok = True
    except pydantic.ValidationError:
        model_ok = False
    assert schema_ok == model_ok
    if model_ok:
        assert base64.b64encode(base64.b64decode(text)).decode() == text


# ----------------------------------------------------------------------------------- frames


def _read_hexdump(file: Path) -> bytes:
    blob = b""
    for line in file.read_text(encoding="ascii").splitlines():
        if line.startswith("#") or not line.strip():
            continue
        match = re.fullmatch(r"([0-9a-f]{8})  ((?:[0-9a-f]{2} ){0,15}[0-9a-f]{2}) *  (.{1,16})", line)
        assert match, f"{file.name}: not an xxd-style line: {line!r}"
        offset, hexes, ascii_column = match.groups()
        chunk = bytes.fromhex(hexes)
        assert int(offset, 16) == len(blob), f"{file.name}: offset {offset}"
        assert len(blob) % 16 == 0, f"{file.name}: only the last line may be short"
        assert ascii_column == "".join(chr(b) if 32 <= b < 127 else "." for b in chunk), line
        blob += chunk
    return blob


@pytest.mark.parametrize("hex_file", FRAMES, ids=lambda p: p.name)
def test_hex_frame_example_decodes_to_its_json(hex_file: Path) -> None:
    blob = _read_hexdump(hex_file)
    described = json.loads(hex_file.with_suffix(".json").read_text())
    assert len(blob) == described["total_bytes"]

    magic, version, header_size, index, dtype, layout_code, layers, heads, ctx, reserved = (
        struct.unpack_from(FRAME_HEADER, blob))
    assert struct.calcsize(FRAME_HEADER) == header_size == 32
    assert (magic.decode("ascii"), version, header_size, index, dtype, layers, heads, ctx) == (
        described["magic"], described["version"], described["header_size"], described["token_index"],
        described["dtype_code"], described["layers"], described["heads"], described["ctx"])
    layout = described.get("layout", "full")
    assert layout_code == described.get("layout_code", 0) == LAYOUTS.index(layout)
    assert version == (1 if layout == "full" else 2) and reserved == 0
    dtype_name, np_dtype, tolerance = DTYPES[dtype]
    assert dtype_name == described["dtype"]
    assert ctx == described["input_ids_length"] + index  # ctx = len(input_ids) + i
    assert len(blob) == 32 + layers * heads * ctx * np.dtype(np_dtype).itemsize

    values = np.frombuffer(blob, dtype=np_dtype, offset=32).reshape(layers, heads, ctx)
    assert np.shares_memory(values, np.frombuffer(blob, np.uint8))  # a view, not a copy
    np.testing.assert_array_equal(values, np.asarray(described["values"], np_dtype))
    assert ((values >= 0) & (values <= 1)).all()
    rows = values if layout == "full" else values[:, :1]  # the statistics' mean rows are probabilities
    np.testing.assert_allclose(rows.astype(np.float64).sum(axis=-1), 1.0, atol=tolerance)
    if layout != "full":  # F8: the reduction of the full frame it names
        full = json.loads((EXAMPLE_DIR / described["reduced_from"]).read_text())
        a = np.asarray(full["values"], np.float32)
        axes = (1,) if layout == "layer_stats" else (0, 1)
        expected = np.stack([a.mean(axis=axes).reshape(-1, ctx), a.max(axis=axes).reshape(-1, ctx)], axis=1)
        np.testing.assert_array_equal(values, expected)

    # and the bytes are what a struct-based writer makes of the description
    rebuilt = struct.pack(FRAME_HEADER, described["magic"].encode(), version, 32, index, dtype, layout_code,
                          layers, heads, ctx, 0)
    rebuilt += np.asarray(described["values"], np_dtype).tobytes(order="C")
    assert rebuilt == blob


def test_websocket_md_frame_table_is_the_struct_format() -> None:
    text = (SPEC / "websocket.md").read_text(encoding="utf-8")
    assert f'"{FRAME_HEADER}"' in text
    assert 'numpy.frombuffer(message, dtype="<f4", offset=32).reshape(layers, heads, ctx)' in text
    rows = re.findall(r"^\| (\d+) \| (\d+|…) \| *(bytes|u16|u32|) *\| (.+?) \|$", text, re.M)
    header = [(int(o), int(s), t) for o, s, t, _ in rows if s != "…"]
    sizes = {"4s": 4, "H": 2, "I": 4}
    kinds = {"4s": "bytes", "H": "u16", "I": "u32"}
    offset = 0
    for (row_offset, size, kind), code in zip(header, re.findall(r"4s|H|I", FRAME_HEADER), strict=True):
        assert (row_offset, size, kind) == (offset, sizes[code], kinds[code])
        offset += size
    assert offset == 32
    assert rows[-1][:3] == ("32", "…", "") and "C order `[layers, heads, ctx]`" in rows[-1][3]


def test_markdown_links_point_to_existing_files() -> None:
    for doc in ("README.md", "websocket.md"):
        text = (SPEC / doc).read_text(encoding="utf-8")
        links = re.findall(r"\]\(([^)#]+)\)", text)
        local = [link for link in links if not link.startswith(("http://", "https://"))]
        assert local, doc
        for link in local:
            assert (SPEC / link).exists(), f"{doc}: {link}"


def test_websocket_md_error_codes_are_the_models() -> None:
    text = (SPEC / "websocket.md").read_text(encoding="utf-8")
    ws_codes = set(re.findall(r"^\| `([A-Z_]+)` \|", text, re.M))
    assert ws_codes == {"INVALID_REQUEST", "INVALID_TOKEN", "CONTEXT_OVERFLOW", "BUSY", "UNAUTHORIZED",
                        "ATTENTION_UNAVAILABLE", "INTERNAL"}
    assert ws_codes <= set(typing.get_args(messages.ErrorCode)) == set(STATUS)
    close_codes = set(re.findall(r"^\| (1\d{3}) \|", text, re.M))
    assert close_codes == {"1000", "1002", "1003", "1007", "1009"}
