"""KoboldCPP v1.76's HTTP server, reduced to how it serves and answers, around the halo_api package.

What matters here is copied from v1.76's koboldcpp.py, not reinvented:

- `RunServerMultiThreaded` (koboldcpp.py ~2121): 24 threads on one listening socket, each with
  ONE `ServerRequestHandler` object that serves every request of every connection the thread
  accepts (`__call__` re-runs `__init__` on the same object). State a request leaves on that
  object (e.g. `protocol_version`) is there for the next request, of any endpoint.
- `ServerRequestHandler` (~1373): HTTP/1.0 (the `BaseHTTPRequestHandler` default), its
  `end_headers` adding CORS headers, `do_OPTIONS`, the 404 and the 401/500/503 answers without a
  Content-Length, `/api/v1/model` with one, and the SSE stream's `connection: keep-alive` header
  (which flips `close_connection` for that request) then `close_connection = True`.
- The patch's routing hook (`halo_api_route`, in the .patch's koboldcpp.py hunk).

So a change in halo_api that leaves state KoboldCPP's own answers read fails the tests here,
without KoboldCPP.
"""

from __future__ import annotations

import http.server
import json
import socket
import threading
from types import ModuleType, SimpleNamespace
from typing import Any

#: koboldcpp.py v1.76 RunServerMultiThreaded's numThreads
THREADS = 24
HALO_PATHS = ('/api/v1/model/info', '/api/v1/tokenize', '/api/v1/detokenize', '/api/v1/generate/stream')


def make_handler_class(halo: ModuleType, kcpp: SimpleNamespace, halo_server: Any) -> type:
    class ServerRequestHandler(http.server.SimpleHTTPRequestHandler):
        sys_version = ""
        server_version = "ConcedoLlamaForKoboldServer"

        def __init__(self, addr: str, port: int) -> None:  # as koboldcpp.py: no super().__init__
            self.addr = addr
            self.port = port

        def __call__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def halo_api_route(self, method: str) -> bool:  # the patch's hook, as in the .patch
            if self.path.split('?', 1)[0].rstrip('/') not in HALO_PATHS:
                return False
            halo_server.serve(self, method)
            return True

        def secure_endpoint(self) -> bool:
            if kcpp.password and kcpp.password != "":
                auth_header = self.headers.get('Authorization')
                auth_ok = False
                if auth_header is not None and auth_header.startswith('Bearer '):
                    auth_ok = auth_header[len('Bearer '):].strip() == kcpp.password
                if not auth_ok:
                    self.send_response(401)
                    self.end_headers(content_type='application/json')
                    self.wfile.write(json.dumps({"detail": {
                        "error": "Unauthorized", "msg": "Authentication key is missing or invalid.",
                        "type": "unauthorized"}}).encode())
                    return False
            return True

        def do_GET(self) -> None:
            if self.halo_api_route("GET"):
                return
            self.path = self.path.rstrip('/')
            response_body = None
            if self.path.endswith(('/api/v1/model', '/api/latest/model')):
                response_body = json.dumps({'result': kcpp.friendlymodelname}).encode()
            if response_body is None:
                self.send_response(404)
                self.end_headers(content_type='text/html')
                rp = 'Error: HTTP Server is running, but this endpoint does not exist. Please check the URL.'
                self.wfile.write(rp.encode())
            else:
                self.send_response(200)
                self.send_header('content-length', str(len(response_body)))
                self.end_headers(content_type='application/json')
                self.wfile.write(response_body)

        def do_POST(self) -> None:
            if self.halo_api_route("POST"):
                return
            contlenstr = self.headers['content-length']
            body = self.rfile.read(int(contlenstr)) if contlenstr else b""
            self.path = self.path.rstrip('/')
            if not kcpp.modelbusy.acquire(blocking=False):
                self.send_response(503)
                self.end_headers(content_type='application/json')
                self.wfile.write(json.dumps({"detail": {"msg": "Server is busy; please try again later.",
                                                        "type": "service_unavailable"}}).encode())
                return
            try:
                stream = self.path.endswith('/api/extra/generate/stream')
                if stream or self.path.endswith(('/api/v1/generate', '/api/latest/generate')):
                    if not self.secure_endpoint():
                        return
                    try:
                        genparams = json.loads(body)
                    except ValueError:
                        genparams = None
                    if not genparams:
                        self.send_response(500)
                        self.end_headers(content_type='application/json')
                        self.wfile.write(json.dumps({"detail": {"msg": "Error parsing input.",
                                                                "type": "bad_input"}}).encode())
                        return
                    text = "".join(chr(97 + (len(genparams.get("prompt", "")) + i) % 26)
                                   for i in range(int(genparams.get("max_length", 4))))
                    if stream:
                        self.send_response(200)
                        self.send_header("cache-control", "no-cache")
                        self.send_header("connection", "keep-alive")
                        self.end_headers(content_type='text/event-stream')
                        for i, ch in enumerate(text):
                            finish = "length" if i == len(text) - 1 else None
                            self.wfile.write(b'event: message\n')
                            self.wfile.write(f'data: {json.dumps({"token": ch, "finish_reason": finish})}\n\n'.encode())
                            self.wfile.flush()
                        self.close_connection = True
                        return
                    genresp = json.dumps({"results": [{"text": text, "finish_reason": "length"}]}).encode()
                    self.send_response(200)
                    self.send_header('content-length', str(len(genresp)))
                    self.end_headers(content_type='application/json')
                    self.wfile.write(genresp)
                    return
                self.send_response(404)
                self.end_headers(content_type='text/html')
            finally:
                kcpp.modelbusy.release()

        def do_OPTIONS(self) -> None:
            self.send_response(200)
            self.end_headers(content_type='text/html')

        def do_HEAD(self) -> None:
            self.send_response(200)
            self.end_headers(content_type='text/html')

        def end_headers(self, content_type: str | None = None) -> None:
            self.send_header('access-control-allow-origin', '*')
            self.send_header('access-control-allow-methods', '*')
            self.send_header('access-control-allow-headers', '*, Accept, Content-Type, Content-Length, Cache-Control, '
                             'Accept-Encoding, X-CSRF-Token, Client-Agent, X-Fields, Content-Type, Authorization, '
                             'X-Requested-With, X-HTTP-Method-Override, apikey, genkey')
            self.send_header("cache-control", "no-store")
            if content_type is not None:
                self.send_header('content-type', content_type)
            return super().end_headers()

    return ServerRequestHandler


class KoboldLikeServer:
    """`RunServerMultiThreaded` on 127.0.0.1, an ephemeral port, with the halo_api package behind the hook."""

    def __init__(self, halo: ModuleType, kcpp: SimpleNamespace, backend: Any, threads: int = THREADS) -> None:
        self.halo_server = halo.HaloServer(kcpp, backend=backend)
        handler_class = make_handler_class(halo, kcpp, self.halo_server)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(threads)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.handlers: list[Any] = []
        self.servers: list[http.server.HTTPServer] = []
        for _ in range(threads):
            handler = handler_class("127.0.0.1", self.port)  # one object per thread, reused
            httpd = http.server.HTTPServer(("127.0.0.1", self.port), handler, False)
            httpd.socket = self.sock
            self.handlers.append(handler)
            self.servers.append(httpd)
            threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        """Stop every thread without waiting for one that still serves a connection (a stream in
        its close handshake, say): each test has its own server, so such a thread is harmless;
        the listening socket is closed once every thread has left it."""
        stoppers = [threading.Thread(target=s.shutdown, daemon=True) for s in self.servers]
        for t in stoppers:
            t.start()

        def close_when_stopped() -> None:
            for t in stoppers:
                t.join()
            self.sock.close()

        threading.Thread(target=close_when_stopped, daemon=True).start()
