"""The UI server: the page, its static files and its one WebSocket, on Starlette and uvicorn.

Starlette and uvicorn rather than the contract servers' own HTTP layer (serving/server.py):
that layer exists to stream megabyte frames with the fewest copies; the workbench needs an
ordinary, well-kept web stack (static files, ASGI lifespan, a WebSocket with pings and size
limits), and gets one.

Safety, since any web page the user opens can reach a server on localhost:

- it binds 127.0.0.1 unless told otherwise;
- every request's `Host` must be a loopback name, an IP address or an allowed name (a DNS-
  rebinding page has a name of its own), and the WebSocket's and every non-GET request's
  `Origin` must be the page's own origin or an allowed one (a foreign page's differs): the rules
  of `serving/access.AccessPolicy`, shared with the contract's servers;
- the page may only run its own scripts and talk to its own origin (Content-Security-Policy),
  cannot be framed, and loads nothing from the network.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections import deque
from collections.abc import AsyncIterator
from typing import Final

import uvicorn
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from halo_client.serving.access import AccessPolicy
from halo_client.ui import palette
from halo_client.ui.export import static_text
from halo_client.ui.protocol import MAX_COMMAND_BYTES
from halo_client.ui.workbench import Workbench

log = logging.getLogger("halo_client.ui")

SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                                "img-src 'self' data: blob:; base-uri 'none'; form-action 'none'; "
                                "frame-ancestors 'none'"),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class AccessGuard:
    """ASGI middleware: the Host rule on every request, the Origin rule on the WebSocket and on
    every request that is not a GET (module docstring). A refusal is 403 and one log line."""

    def __init__(self, app: ASGIApp, policy: AccessPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            headers = Headers(scope=scope)
            host, origin = headers.get("host"), headers.get("origin")
            refusal = None
            if not self.policy.host_allowed(host):
                refusal = AccessPolicy.host_refusal(host or "")
            elif ((scope["type"] == "websocket" or scope.get("method") not in SAFE_METHODS)
                  and not self.policy.origin_allowed(origin, host)):
                refusal = AccessPolicy.origin_refusal(origin or "")
            if refusal is not None:
                log.warning("refused %s %s: %s", scope["type"], scope.get("path"), refusal)
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008, "reason": ""})  # 403 before the upgrade
                else:
                    await PlainTextResponse(refusal, 403)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class Outbox:
    """One page's messages, sent in order by one task. A `levels` update (bytes) that has not
    gone out yet is dropped when a newer one comes: each carries every active position, so a
    page that falls behind skips to the newest brightness instead of queueing stale ones, while
    every JSON message (tokens, structure) is still delivered."""

    def __init__(self) -> None:
        self._queue: deque[str | bytes] = deque()
        self._levels_pending = False
        self._ready = asyncio.Event()
        self.dropped = 0

    def put(self, message: str | bytes) -> None:
        if isinstance(message, bytes) and self._levels_pending:
            for i in range(len(self._queue) - 1, -1, -1):
                if isinstance(self._queue[i], bytes):
                    del self._queue[i]
                    self.dropped += 1
                    break
        if isinstance(message, bytes):
            self._levels_pending = True
        self._queue.append(message)
        self._ready.set()

    async def pump(self, websocket: WebSocket) -> None:
        while True:
            await self._ready.wait()
            self._ready.clear()
            while self._queue:
                message = self._queue.popleft()
                if isinstance(message, bytes):
                    self._levels_pending = any(isinstance(m, bytes) for m in self._queue)
                    await websocket.send_bytes(message)
                else:
                    await websocket.send_text(message)


def create_app(workbench: Workbench, policy: AccessPolicy) -> Starlette:
    index = static_text("index.html")
    palette_css = palette.css()

    async def page(_request: object) -> Response:
        return Response(index, media_type="text/html", headers=SECURITY_HEADERS)

    async def colours(_request: object) -> Response:
        return Response(palette_css, media_type="text/css", headers=SECURITY_HEADERS)

    async def favicon(_request: object) -> Response:
        return Response(status_code=204)

    async def stream(websocket: WebSocket) -> None:
        await websocket.accept()
        outbox = Outbox()
        writer = asyncio.create_task(outbox.pump(websocket))
        workbench.subscribe(outbox.put)
        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                data = message.get("text") or message.get("bytes")
                if data:
                    await workbench.handle(data, outbox.put)
        except WebSocketDisconnect:
            pass
        finally:
            workbench.unsubscribe(outbox.put)
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await writer

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        await workbench.start()
        try:
            yield
        finally:
            await workbench.close()
            await workbench.client.aclose()

    static = StaticFiles(packages=[("halo_client.ui", "static")])
    app = Starlette(routes=[Route("/", page), Route("/palette.css", colours), Route("/favicon.ico", favicon),
                            Mount("/static", static, name="static"), WebSocketRoute("/ws", stream)],
                    lifespan=lifespan)
    app.add_middleware(AccessGuard, policy=policy)
    return app


def uvicorn_server(app: Starlette) -> uvicorn.Server:
    # no per-message deflate: it would cost CPU on every token for float32 that barely compresses
    return uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                                         ws_max_size=MAX_COMMAND_BYTES, ws_per_message_deflate=False))


async def serve(app: Starlette, sock: socket.socket) -> None:
    """Serve until Ctrl-C (uvicorn's own signal handling: the lifespan closes the workbench)."""
    await uvicorn_server(app).serve(sockets=[sock])
