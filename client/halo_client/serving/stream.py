"""One generation stream: the WebSocket session that reads the client's messages while it
drives a generation, writes tokens and attention frames with backpressure, and stops on abort
or disconnect. The HTTP side (`server.py`) hands it the socket after the 101."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Final

import numpy as np
import pydantic
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol

from halo_client.frame import frame_header
from halo_client.messages import DoneMessage, ErrorCode, ErrorMessage, GenerateRequest, ModelInfo, Timings, TokenMessage
from halo_client.serving.backend import ModelBackend
from halo_client.serving.faults import FaultPlan
from halo_client.serving.generation import Finished, GeneratedToken, check_request, generate
from halo_client.serving.slot import GenerationSlot
from halo_client.serving.validation import RequestRejected, parse_body

log = logging.getLogger("halo_client.server")

FIRST_MESSAGE_TIMEOUT_S: Final = 30.0


@dataclass
class ServerStats:
    """What a test may want to know about the server's own behaviour."""

    generations: int = 0
    #: tokens computed after the client had gone (abort latency, in tokens), last generation
    tokens_after_disconnect: int = 0
    #: the largest write buffer a WebSocket had, in bytes: bounded means backpressure works
    max_write_buffer: int = 0



@dataclass(frozen=True)
class GenerationContext:
    """What a stream needs from its server: the model, its one thread, the slot, counters."""

    backend: ModelBackend
    info: ModelInfo
    slot: GenerationSlot
    model_thread: ThreadPoolExecutor
    stats: ServerStats
    faults: FaultPlan | None


_WRITE_CHUNK: Final = 1 << 21


@dataclass(frozen=True)
class _FaultEnd:
    """An injected fault ends the stream: with this message, or (None) with nothing more sent."""

    message: ErrorMessage | None


def _done_message(item: Finished) -> DoneMessage:
    seconds = item.generation_ms / 1000.0
    return DoneMessage(
        type="done", finish_reason=item.finish_reason, token_count=item.token_count,
        prompt_tokens=item.prompt_tokens,
        timings=Timings(prompt_ms=item.prompt_ms, generation_ms=item.generation_ms,
                        tokens_per_second=item.token_count / seconds if seconds > 0 else 0.0),
    )


def _binary_frame_header(length: int) -> bytes:
    """RFC 6455 section 5.2 header of one unfragmented, unmasked binary frame."""
    if length < 126:
        return bytes((0x82, length))
    if length < 1 << 16:
        return bytes((0x82, 126)) + length.to_bytes(2, "big")
    return bytes((0x82, 127)) + length.to_bytes(8, "big")


class StreamSession:
    """One WebSocket: reads client frames concurrently with the generation it drives."""

    def __init__(self, generation: GenerationContext, protocol: ServerProtocol,
                 reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.backend = generation.backend
        self.info = generation.info
        self.slot = generation.slot
        self.model_thread = generation.model_thread
        self.stats = generation.stats
        self.faults = generation.faults
        self.protocol = protocol
        self.reader = reader
        self.writer = writer
        self.messages: asyncio.Queue[str | None] = asyncio.Queue()
        self.gone = False  # the client closed or vanished
        self.abort_requested = False  # the client sent {"type": "abort"}
        self._parts: list[bytes] = []
        self._part_opcode: Opcode | None = None

    def feed(self, data: bytes) -> None:
        self.protocol.receive_data(data)
        self._drain_events()

    def write_pending(self) -> None:
        """Hand what the protocol has queued to the transport, without waiting."""
        for chunk in self.protocol.data_to_send():
            if chunk:
                self.writer.write(chunk)
            elif self.writer.can_write_eof():
                with contextlib.suppress(OSError):
                    self.writer.write_eof()
        self._note_buffer()

    async def flush(self) -> None:
        self.write_pending()
        await self.writer.drain()

    def _note_buffer(self) -> None:
        size = self.writer.transport.get_write_buffer_size()
        stats = self.stats
        stats.max_write_buffer = max(stats.max_write_buffer, size)

    def _drain_events(self) -> None:
        for event in self.protocol.events_received():
            if not isinstance(event, Frame):
                continue
            if event.opcode in (Opcode.TEXT, Opcode.BINARY):
                self._part_opcode = event.opcode
                self._parts = [bytes(event.data)]
            elif event.opcode is Opcode.CONT:
                self._parts.append(bytes(event.data))
            elif event.opcode is Opcode.CLOSE:
                self._stop()
                continue
            else:
                continue  # ping/pong: the protocol already answered
            if not event.fin:
                continue
            data = b"".join(self._parts)
            self._parts = []
            if self._part_opcode is Opcode.BINARY:
                self.protocol.fail(1003, "this endpoint accepts text messages only")
                self._stop()
            else:
                try:
                    self.messages.put_nowait(data.decode("utf-8"))
                except UnicodeDecodeError:
                    self.protocol.fail(1007, "text message is not valid UTF-8")
                    self._stop()
        if self.protocol.close_code is not None or self.protocol.parser_exc is not None:
            self._stop()

    def _stop(self) -> None:
        if not self.gone:
            self.gone = True
            self.messages.put_nowait(None)

    async def _read_loop(self) -> None:
        try:
            while not self.reader.at_eof():
                data = await self.reader.read(65536)
                if not data:
                    break
                self.feed(data)
                await self.flush()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                self.protocol.receive_eof()
            self._stop()

    @property
    def stopping(self) -> bool:
        """The client is gone or asked to abort: the generation ends within a token."""
        return self.gone or self.abort_requested

    @property
    def open(self) -> bool:
        return not self.gone and self.protocol.state is State.OPEN

    async def send_json(self, message: pydantic.BaseModel) -> None:
        if self.open:
            self.protocol.send_text(message.model_dump_json().encode())
            await self.flush()

    async def send_error(self, code: ErrorCode, message: str) -> None:
        await self.send_json(ErrorMessage(type="error", code=code, message=message))
        await self.close(1000)

    async def close(self, code: int, reason: str = "") -> None:
        if self.open:
            with contextlib.suppress(Exception):
                self.protocol.send_close(code, reason)
                await self.flush()

    async def run(self) -> None:
        reader_task = asyncio.create_task(self._read_loop())
        try:
            await self._serve_one()
            # let the client's close frame come back, briefly, for a clean handshake
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(reader_task), 2.0)
        finally:
            reader_task.cancel()

    async def _serve_one(self) -> None:
        try:
            text = await asyncio.wait_for(self.messages.get(), FIRST_MESSAGE_TIMEOUT_S)
        except TimeoutError:
            await self.send_error("INVALID_REQUEST",
                                  f"no generation request within {FIRST_MESSAGE_TIMEOUT_S:g} s")
            return
        if text is None:
            await self.flush()
            return
        try:
            request = parse_body(GenerateRequest, text)
            check_request(request, self.info)
        except RequestRejected as exc:
            await self.send_error(exc.code, exc.message)
            return
        if self.faults is not None and self.faults.always_busy:
            await self.send_error("BUSY", "another generation is running; retry when it is done")
            return
        if not await self.slot.acquire(self):
            await self.send_error("BUSY", "another generation is running; retry when it is done")
            return
        try:
            ending = await self._generate(request)
        finally:
            self.slot.release()
        # Only now, with the slot free, may the client hear that the generation ended: one that
        # starts its next stream the moment `done` arrives must not be told BUSY.
        if ending is not None:
            await self.send_json(ending)
            await self.close(1000)

    async def _generate(self, request: GenerateRequest) -> DoneMessage | ErrorMessage | None:
        """Runs the generation, writing its tokens and frames; returns the message that ends the
        stream (sent once the slot is free), or None when nothing more is to be sent."""
        faults, stats = self.faults, self.stats
        loop = asyncio.get_running_loop()
        stats.generations += 1
        stats.tokens_after_disconnect = 0

        tokens = generate(self.backend, request, self.info, lambda: self.stopping)
        watcher = asyncio.create_task(self._watch_abort())
        compute = functools.partial(loop.run_in_executor, self.model_thread, next, tokens, None)
        pending: asyncio.Future[GeneratedToken | Finished | None] | None = compute()
        try:
            while pending is not None:
                item = await pending
                pending = None
                if self.gone:
                    if isinstance(item, GeneratedToken):
                        stats.tokens_after_disconnect += 1
                        pending = compute()
                    continue
                if item is None:
                    raise RuntimeError("generation ended without finishing")
                if isinstance(item, Finished):
                    return _done_message(item)
                if faults is not None:
                    fault = await self._commit_fault(faults, item)
                    if fault is not None:
                        return fault.message
                self.write_message(TokenMessage(type="token", index=item.index,
                                                token_id=item.token_id, piece=item.piece))
                if item.attention is not None:
                    self.write_frame(item, request, faults)
                # Once written, the result's buffers are free (the transport copied what it
                # could not send), so the next token is computed while this one drains: one
                # frame in flight, one in the making, and no more.
                pending = compute()
                await self.writer.drain()
            return None  # the client is gone: nobody to tell
        except Exception as exc:
            log.exception("generation failed")
            return ErrorMessage(type="error", code="INTERNAL",
                                message=f"generation failed: {type(exc).__name__}: {exc}")
        finally:
            self.abort_requested = True  # a generation cut short by an exception stops too
            watcher.cancel()
            if pending is not None:  # let the model thread finish the token in hand
                with contextlib.suppress(Exception):
                    await pending

    async def _watch_abort(self) -> None:
        """After the request, the only message a client may send is {"type": "abort"}."""
        while True:
            text = await self.messages.get()
            if text is None:
                return
            with contextlib.suppress(ValueError):
                if json.loads(text) == {"type": "abort"}:
                    # finish with `aborted`; the socket stays open for `done`
                    self.abort_requested = True
                    return

    def write_message(self, message: pydantic.BaseModel) -> None:
        if self.open:
            self.protocol.send_text(message.model_dump_json().encode())
            self.write_pending()

    def write_frame(self, item: GeneratedToken, request: GenerateRequest, faults: FaultPlan | None) -> None:
        assert item.attention is not None
        values, dtype = item.attention, request.attention_dtype
        if dtype == "float16":
            values = values.astype("<f2")
        elif values.dtype != np.dtype("<f4") or not values.flags.c_contiguous:
            values = np.ascontiguousarray(values, dtype="<f4")
        layers, heads, ctx = values.shape
        header = frame_header(layers, heads, ctx, item.index, dtype, request.attention_layout)
        payload: memoryview | bytes = memoryview(values.reshape(-1).view(np.uint8))  # type: ignore[arg-type]
        if faults is not None:
            if faults.corrupt_frame_at == item.index:
                header = b"XXXX" + header[4:]
            if faults.truncate_frame_at == item.index:
                payload = bytes(payload[: len(payload) // 2])
        if not self.open:
            return
        # The payload is written from the array itself: a frame is megabytes, and
        # websockets' send_binary would copy it twice. Server frames are unmasked, so the
        # WebSocket framing is only a header; the protocol object needs no part in it.
        self.write_pending()
        self.writer.write(_binary_frame_header(len(header) + len(payload)) + header)
        for start in range(0, len(payload), _WRITE_CHUNK):
            # In chunks: Python 3.11's transport buffer is one bytearray that it shifts after
            # every send, which is quadratic in the size of one huge write.
            self.writer.write(payload[start : start + _WRITE_CHUNK])
        self._note_buffer()

    async def _commit_fault(self, faults: FaultPlan, item: GeneratedToken) -> _FaultEnd | None:
        """The end an injected fault gives the stream before this token, or None: go on."""
        if faults.token_delay_s:
            await asyncio.sleep(faults.token_delay_s)
            if not self.open:
                return _FaultEnd(None)
        if faults.drop_before_token == item.index:
            self.writer.transport.abort()
            self.gone = True
            return _FaultEnd(None)
        if faults.error_at == item.index:
            return _FaultEnd(ErrorMessage(type="error", code=faults.error_code,
                                          message=f"injected fault: {faults.error_code}"))
        return None
