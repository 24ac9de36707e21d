"""Halo Weave client: stream a local model's attention and keep long chats inside its context."""

__version__ = "0.1.0"
