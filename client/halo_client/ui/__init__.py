"""The workbench: watch attention light up the conversation, live, in the browser.

`halo-client ui` serves a local page (static/, no build step, nothing loaded from the network)
that is a view and controller over one WebSocket; the conversation itself lives here, in
`Workbench` (workbench.py), which drives the same `Chat` the command line uses. Modules: the
page's controller (workbench.py) with the model server's status (server_watch.py), what the
pages were sent (page_sync.py) and the pages themselves (broadcast.py); the wire format
(protocol.py: commands and the binary update; page_messages.py: the JSON messages), colours
(palette.py), the on-demand full frame (inspector.py), the tooltip's attention figures
(token_attention.py), session files (sessions.py), the HTML snapshot (export.py), the Starlette
app (server.py). Needs the `ui` extra (Starlette, uvicorn).
"""
