"""`KoboldClient`: the async client of the contract (REST over httpx, the stream over WebSocket)."""

from __future__ import annotations

import abc
import contextlib
import json
import math
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, TypeVar

import httpx
import pydantic

from halo_client.errors import (
    FrameError,
    HaloError,
    ProtocolError,
    RequestTimeout,
    ServerBusy,
    ServerError,
    ServerUnreachable,
    Unauthorized,
)
from halo_client.frame import HEADER_SIZE, AttentionFrame, check_frame_semantics, decode_frame, frame_shape
from halo_client.messages import (
    AbortMessage,
    DetokenizeRequest,
    DetokenizeResponse,
    DoneMessage,
    ErrorCode,
    ErrorMessage,
    ErrorResponse,
    GenerateRequest,
    ModelInfo,
    ServerMessage,
    Timings,
    TokenizeRequest,
    TokenizeResponse,
    TokenMessage,
)
from halo_client.websocket_client import (
    HandshakeRefused,
    StreamConnection,
    WebSocketClosed,
    connect,
)

_M = TypeVar("_M", bound=pydantic.BaseModel)

DEFAULT_URL: Final = "http://localhost:5001"
STREAM_PATH: Final = "/api/v1/generate/stream"
#: The contract caps server text messages at 64 KiB; anything bigger is a protocol violation.
MAX_TEXT_MESSAGE: Final = 64 * 1024

_SERVER_MESSAGE: pydantic.TypeAdapter[TokenMessage | DoneMessage | ErrorMessage] = (
    pydantic.TypeAdapter(ServerMessage)
)


@dataclass(frozen=True)
class TokenEvent:
    """One generated token; `attention` is its frame (a zero-copy view) when requested."""

    index: int
    token_id: int
    piece: bytes
    attention: AttentionFrame | None


@dataclass(frozen=True)
class DoneEvent:
    finish_reason: str
    token_count: int
    prompt_tokens: int
    timings: Timings


StreamEvent = TokenEvent | DoneEvent


def _error_for(code: ErrorCode, message: str, url: str, status: int | None = None) -> ServerError:
    if code == "UNAUTHORIZED":
        return Unauthorized(message, url, status)
    if code == "BUSY":
        return ServerBusy(code, message, url, status)
    return ServerError(code, message, url, status)


_C = TypeVar("_C", bound="_AsyncClosing")


class _AsyncClosing(abc.ABC):
    """`async with` support for anything with an `aclose()`."""

    @abc.abstractmethod
    async def aclose(self) -> None: ...

    async def __aenter__(self: _C) -> _C:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class KoboldClient(_AsyncClosing):
    """Talks to any server of the contract: a patched KoboldCPP, the reference or the mock server.

    Use as `async with KoboldClient(url) as client: ...`; it owns one httpx connection pool.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        password: str | None = None,
        timeout: float = 60.0,
        origin: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        if not self.url.startswith(("http://", "https://")):
            raise HaloError(f"server URL {url!r} must start with http:// or https://")
        self.password = password
        self.timeout = timeout
        self.origin = origin
        headers = {"Authorization": f"Bearer {password}"} if password else {}
        self._http = httpx.AsyncClient(
            base_url=self.url, headers=headers, timeout=timeout, transport=transport
        )
        self._model_info: ModelInfo | None = None

    async def aclose(self) -> None:
        await self._http.aclose()

    # ------------------------------------------------------------------------- REST

    async def _request(self, method: str, path: str, body: pydantic.BaseModel | None = None) -> Any:
        url = f"{self.url}{path}"
        try:
            response = await self._http.request(
                method, path, json=None if body is None else body.model_dump(mode="json")
            )
        except httpx.TimeoutException as exc:
            raise RequestTimeout(url, self.timeout, f"{method} {path}") from exc
        except httpx.TransportError as exc:
            raise ServerUnreachable(self.url, type(exc).__name__) from exc
        try:
            payload = response.json()
        except ValueError as exc:
            raise ProtocolError(
                f"{method} {url} answered {response.status_code} with a body that is not JSON; "
                "is this a Halo Weave server (a patched KoboldCPP, `halo-client serve`)?"
            ) from exc
        if response.is_success:
            return payload
        try:
            error = ErrorResponse.model_validate(payload).error
        except pydantic.ValidationError as exc:
            if response.status_code == 404:
                raise ServerError(
                    "NOT_FOUND", f"{path} does not exist here: this server does not speak the "
                    "Halo Weave API (an unpatched KoboldCPP?)", self.url, 404) from exc
            raise ProtocolError(
                f"{method} {url} failed with {response.status_code} without the contract's error body"
            ) from exc
        raise _error_for(error.code, error.message, self.url, response.status_code)

    async def model_info(self, *, refresh: bool = False) -> ModelInfo:
        """The model's shape and capabilities; cached after the first call."""
        if self._model_info is None or refresh:
            payload = await self._request("GET", "/api/v1/model/info")
            self._model_info = self._parse(ModelInfo, payload, "/api/v1/model/info")
        return self._model_info

    async def tokenize(self, text: str, *, add_special_tokens: bool = True) -> TokenizeResponse:
        payload = await self._request(
            "POST", "/api/v1/tokenize", TokenizeRequest(text=text, add_special_tokens=add_special_tokens)
        )
        return self._parse(TokenizeResponse, payload, "/api/v1/tokenize")

    async def detokenize(self, token_ids: Sequence[int]) -> str:
        payload = await self._request(
            "POST", "/api/v1/detokenize", DetokenizeRequest(token_ids=list(token_ids))
        )
        return self._parse(DetokenizeResponse, payload, "/api/v1/detokenize").text

    def _parse(self, model: type[_M], payload: Any, path: str) -> _M:
        try:
            return model.model_validate(payload)
        except pydantic.ValidationError as exc:
            raise ProtocolError(f"{self.url}{path} answered a body that breaks the contract: {exc}") from exc

    # ----------------------------------------------------------------------- stream

    def generate_stream(self, input_ids: Sequence[int], **params: Any) -> GenerationStream:
        """Start a generation; iterate the result for `TokenEvent`s and a final `DoneEvent`.

        `params` are `GenerateRequest` fields (max_length, temperature, return_attention,
        attention_layout, ...). A reduced `attention_layout` ("layer_stats", "model_stats") gets
        frames of statistics over heads computed by the server, a fraction of the full size.
        Use `async with client.generate_stream(...) as stream:` so that leaving early closes
        the socket at once; closing it is how the server learns to stop generating.
        """
        try:
            request = GenerateRequest(input_ids=list(input_ids), **params)
        except pydantic.ValidationError as exc:
            raise HaloError(f"invalid generation request: {exc}") from exc
        return GenerationStream(self, request)

    def _ws_url(self) -> str:
        scheme, rest = self.url.split("://", 1)
        if scheme == "https":
            raise HaloError(
                f"{self.url}: the attention stream is served over plain ws:// on the local machine "
                "or network; use an http:// URL (put a TLS proxy in front only for REST)"
            )
        return f"ws://{rest}{STREAM_PATH}"


class GenerationStream(_AsyncClosing):
    """One generation: an async iterator of events that owns its WebSocket."""

    def __init__(self, client: KoboldClient, request: GenerateRequest) -> None:
        self._client = client
        self.request = request
        self._ws: StreamConnection | None = None
        self._events: AsyncIterator[StreamEvent] | None = None
        self.done: DoneEvent | None = None

    def __aiter__(self) -> GenerationStream:
        return self

    async def __anext__(self) -> StreamEvent:
        if self._events is None:
            self._events = self._run()
        try:
            return await self._events.__anext__()
        except BaseException:
            # Cancelled, failed or finished: in every case the socket must go now.
            await self.aclose()
            raise

    async def aclose(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            await ws.close()

    async def abort(self) -> None:
        """Ask the server to stop early (rule A1): it finishes the token in hand and ends with
        `done`, finish_reason `aborted`; keep iterating to receive them. Leaving the stream
        (closing it) stops the server too, but loses `done` and the token in flight."""
        if self._ws is not None:
            with contextlib.suppress(WebSocketClosed, OSError):
                await self._ws.send_text(AbortMessage(type="abort").model_dump_json())

    async def _recv(self, ws: StreamConnection, what: str) -> str | bytes | bytearray | memoryview:
        client = self._client
        try:
            return await ws.recv(client.timeout)
        except TimeoutError as exc:
            raise RequestTimeout(client.url, client.timeout, what) from exc
        except WebSocketClosed as exc:
            raise ProtocolError(
                f"{client.url} closed the stream before `done` ({exc}): the generation was cut off"
            ) from exc

    async def _connect(self, max_frame: int) -> StreamConnection:
        client = self._client
        headers = {"Authorization": f"Bearer {client.password}"} if client.password else {}
        if client.origin:
            headers["Origin"] = client.origin
        url = client._ws_url()
        try:
            return await connect(url, headers=headers, max_size=max_frame, timeout=client.timeout)
        except HandshakeRefused as exc:
            try:
                error = ErrorResponse.model_validate_json(exc.body).error
            except pydantic.ValidationError:
                raise ProtocolError(f"{url} refused the WebSocket upgrade with HTTP {exc.status}") from exc
            raise _error_for(error.code, error.message, client.url, exc.status) from exc
        except TimeoutError as exc:
            raise RequestTimeout(client.url, client.timeout, "the WebSocket upgrade") from exc
        except OSError as exc:
            raise ServerUnreachable(client.url, str(exc) or type(exc).__name__) from exc

    async def _run(self) -> AsyncIterator[StreamEvent]:
        client, request = self._client, self.request
        info = await client.model_info()
        itemsize = 2 if request.attention_dtype == "float16" else 4
        layers, heads = info.num_layers, info.num_attention_heads
        max_frame = HEADER_SIZE + math.prod(frame_shape(request.attention_layout, layers, heads,
                                                        info.max_context_length)) * itemsize
        self._ws = ws = await self._connect(max(MAX_TEXT_MESSAGE, max_frame))
        # a request for full frames is sent as before layouts existed, so servers that predate
        # them serve it too
        await ws.send_text(request.model_dump_json(exclude={"attention_layout"} if request.attention_layout == "full"
                                                   else None))
        n_input = len(request.input_ids)
        expected_index = 0
        while True:
            raw = await self._recv(ws, "the next token")
            if not isinstance(raw, str):
                raise ProtocolError(f"binary message where a text message was due (token {expected_index})")
            if len(raw) > MAX_TEXT_MESSAGE:
                raise ProtocolError(f"text message of {len(raw)} characters exceeds the contract's 64 KiB")
            try:
                message = _SERVER_MESSAGE.validate_python(json.loads(raw))
            except (ValueError, pydantic.ValidationError) as exc:
                raise ProtocolError(f"message breaks the contract: {raw[:200]!r}: {exc}") from exc
            if isinstance(message, ErrorMessage):
                raise _error_for(message.code, message.message, client.url)
            if isinstance(message, DoneMessage):
                if message.token_count != expected_index:
                    raise ProtocolError(
                        f"done says {message.token_count} tokens, {expected_index} arrived"
                    )
                self.done = DoneEvent(
                    message.finish_reason, message.token_count, message.prompt_tokens, message.timings
                )
                yield self.done
                return
            if message.index != expected_index:
                raise ProtocolError(f"token {message.index} arrived where token {expected_index} was due")
            if message.token_id >= info.vocab_size:
                raise ProtocolError(
                    f"token id {message.token_id} is outside the vocabulary ({info.vocab_size})"
                )
            frame: AttentionFrame | None = None
            if request.return_attention:
                blob = await self._recv(ws, f"the attention frame of token {expected_index}")
                if isinstance(blob, str):
                    raise FrameError(f"text message where token {expected_index}'s attention frame was due")
                frame = decode_frame(blob, max_bytes=max_frame)
                check_frame_semantics(
                    frame, layers=layers, heads=heads, ctx=n_input + expected_index,
                    token_index=expected_index, dtype=request.attention_dtype, layout=request.attention_layout,
                )
            yield TokenEvent(expected_index, message.token_id, message.piece, frame)
            expected_index += 1
