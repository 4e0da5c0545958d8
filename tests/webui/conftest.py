"""Fixtures of the web UI tests (tests/webui/harness.py): real Forge / Automatic1111 servers, gated on
FORGE_PATH / A1111_PATH."""

from .harness import forge, webui, webui_factory  # noqa: F401
