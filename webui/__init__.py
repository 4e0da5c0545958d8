"""Automatic1111 / Forge glue of BabelCLIP: the web UI extension's script, settings and text-encoding hook.

Imported only inside a web UI (``scripts/babelclip.py`` is the entry the web UI loads); the core it drives is
:mod:`babelclip.models`, unchanged. ``runtime`` talks to the web UI at run time; ``script`` is the BabelCLIP
section of txt2img and img2img.
"""
