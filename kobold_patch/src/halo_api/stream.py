"""One generation stream: the request, the slot, the generation's events as WebSocket messages,
abort and disconnect, and the message that ends it."""

from __future__ import annotations

import base64
import json
import queue
from typing import Any

from .backend import EVENT_DONE, FINISH, FINISH_ERROR
from .framing import frame_header
from .slot import GenerationSlot
from .validation import Rejected, Request, check_generate_request, parse_generate_request
from .websocket import WebSocket

FIRST_MESSAGE_TIMEOUT_S = 30.0
BUSY_MESSAGE = "another generation is running; retry when it is done"

#: the message that ends a stream: `done`, or an `error`
Ending = dict[str, Any]


def error_message(code: str, message: str) -> Ending:
    return {"type": "error", "code": code, "message": message}


def send_error(ws: WebSocket, code: str, message: str) -> None:
    end(ws, error_message(code, message))


def end(ws: WebSocket, message: Ending) -> None:
    ws.send_text(message)
    ws.close(1000)


class StreamSession:
    """The stream of one upgraded connection, for one KoboldCPP model (`backend`)."""

    def __init__(self, ws: WebSocket, backend: Any, slot: GenerationSlot) -> None:
        self.ws = ws
        self.backend = backend
        self.slot = slot

    def run(self) -> None:
        ws = self.ws
        try:
            text = ws.messages.get(timeout=FIRST_MESSAGE_TIMEOUT_S)
        except queue.Empty:
            send_error(ws, "INVALID_REQUEST", f"no generation request within {FIRST_MESSAGE_TIMEOUT_S:g} s")
            return
        if text is None:
            return
        try:
            req = parse_generate_request(text)
            check_generate_request(req, self.backend.model_info())
        except Rejected as exc:
            send_error(ws, exc.code, exc.message)
            return
        except Exception as exc:
            send_error(ws, "INTERNAL", f"{type(exc).__name__}: {exc}")
            return
        if not self.slot.acquire(ws):
            send_error(ws, "BUSY", BUSY_MESSAGE)
            return
        try:
            ending = self.generate(req)
        finally:
            self.slot.release()
        # Only now, with the slot free, may the client hear that the generation ended: one that
        # starts its next stream the moment `done` arrives must not be told BUSY.
        if ending is not None:
            end(ws, ending)

    def generate(self, req: Request) -> Ending | None:
        """Runs the generation to its end, sending every token (and frame); returns the message
        that ends the stream, or None when the client is gone."""
        ws, backend = self.ws, self.backend
        pieces = backend.pieces()

        def on_message(text: str) -> bool:
            # after the request the only message a client may send is {"type": "abort"}
            try:
                if json.loads(text) == {"type": "abort"}:
                    ws.abort_requested = True
                    backend.abort()
            except ValueError:
                pass
            return True

        ws.on_message = on_message
        while not ws.messages.empty():  # an abort that raced the request
            item = ws.messages.get_nowait()
            if item is not None:
                on_message(item)
        thread = backend.start(req)
        done = None
        error = None
        aborted_for_client = False
        try:
            while True:
                if ws.gone.is_set() and not aborted_for_client:
                    backend.abort()  # the client left: stop within a token
                    aborted_for_client = True
                got = backend.next_event(50)
                if got is None:
                    if not thread.is_alive():
                        got = backend.next_event(0)
                        if got is None:
                            error = "the generation ended without finishing: " + (
                                backend.last_error() or "unknown error")
                            break
                    else:
                        if aborted_for_client:
                            backend.abort()  # an abort sent before the generation began is lost: repeat
                        continue
                event, frame = got
                if event.kind == EVENT_DONE:
                    done = event
                    break
                if ws.gone.is_set():
                    continue  # drain until done; nobody reads
                message = json.dumps({"type": "token", "index": event.index, "token_id": event.token_id,
                                      "piece": base64.b64encode(pieces[event.token_id]).decode("ascii")},
                                     separators=(",", ":")).encode("utf-8")
                head = frame_header(0x1, len(message)) + message
                if frame is not None:
                    ws.send_raw(head + frame_header(0x2, len(frame)), frame)
                else:
                    ws.send_raw(head)
        finally:
            thread.join()
        if ws.gone.is_set():
            return None
        if error is None and done is not None and done.finish_reason == FINISH_ERROR:
            error = backend.last_error() or "the generation failed"
        if error is not None or done is None:
            return error_message("INTERNAL", error or "the generation ended without finishing")
        gen_s = done.generation_ms / 1000.0
        return {"type": "done", "finish_reason": FINISH.get(done.finish_reason, "aborted"),
                "token_count": done.token_count, "prompt_tokens": done.prompt_tokens,
                "timings": {"prompt_ms": max(done.prompt_ms, 0.0), "generation_ms": max(done.generation_ms, 0.0),
                            "tokens_per_second": done.token_count / gen_s if gen_s > 0 else 0.0}}
