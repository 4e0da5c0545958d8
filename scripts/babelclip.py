"""The web UIs' entry point (Automatic1111 / Forge import every *.py in an extension's scripts/ folder).

The extension folder is the ``babelclip`` package (whatever the folder is called): it is loaded under that name,
then the glue package ``babelclip.webui`` provides the BabelCLIP script.
"""

import importlib.util
import os
import sys

_EXT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_loaded = sys.modules.get("babelclip")
if _loaded is None or os.path.dirname(os.path.abspath(getattr(_loaded, "__file__", "") or "")) != _EXT:
    _spec = importlib.util.spec_from_file_location("babelclip", os.path.join(_EXT, "__init__.py"),
                                                   submodule_search_locations=[_EXT])
    _module = importlib.util.module_from_spec(_spec)
    sys.modules["babelclip"] = _module
    _spec.loader.exec_module(_module)

from babelclip.webui.script import BabelCLIPScript  # noqa: E402,F401  (the web UI registers Script subclasses)
