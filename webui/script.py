"""The BabelCLIP section of txt2img / img2img (an always-on web UI script), its setting, and the training tab and API
(:mod:`.training`).

API: ``"alwayson_scripts": {"BabelCLIP": {"args": [enabled, encoder, adapter, mix, strength, int8]}}`` — the order
of :data:`ARGS`; missing trailing values keep their defaults.
"""

from __future__ import annotations

import gradio as gr

from modules import script_callbacks, scripts, shared

from ..models import MIX_MODES
from . import runtime, training

ARGS = ("enabled", "encoder", "adapter", "mix", "strength", "int8")
INFOTEXT_KEY = "BabelCLIP"


class BabelCLIPScript(scripts.Script):
    def title(self):
        return "BabelCLIP"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        with gr.Accordion("BabelCLIP", open=False):
            enabled = gr.Checkbox(False, label="Enable BabelCLIP (any-language prompts)")
            with gr.Row():
                encoder = gr.Dropdown(runtime.list_encoders(), label="Encoder (models/text_encoders)", value="")
                adapter = gr.Dropdown(runtime.list_adapters(), label="Adapter (models/babelclip)", value="")
                refresh = gr.Button("Refresh", size="sm")
            with gr.Row():
                mix = gr.Radio(list(MIX_MODES), value="off", label="Mix with CLIP")
                strength = gr.Slider(0.0, 1.0, value=0.3, step=0.05, label="CLIP strength")
                int8 = gr.Checkbox(False, label="int8 on CPU")
        refresh.click(lambda: (gr.update(choices=runtime.list_encoders()), gr.update(choices=runtime.list_adapters())),
                      outputs=[encoder, adapter])
        self.infotext_fields = [
            (enabled, lambda d: INFOTEXT_KEY in d),
            *((component, (lambda key: lambda d: runtime.parse_infotext(d[INFOTEXT_KEY]).get(key, gr.update())
                           if INFOTEXT_KEY in d else gr.update())(key))
              for component, key in ((encoder, "encoder"), (adapter, "adapter"), (mix, "mix"),
                                     (strength, "strength"), (int8, "int8"))),
        ]
        self.paste_field_names = [INFOTEXT_KEY]
        return [enabled, encoder, adapter, mix, strength, int8]

    def process(self, p, enabled=False, encoder="", adapter="", mix="off", strength=0.3, int8=False):
        job = runtime.Job(encoder, adapter, mix, strength, int8) if enabled else None
        runtime.invalidate_if_changed(p, job)
        runtime.install(shared.sd_model, job)
        if job is not None:
            p.extra_generation_params[INFOTEXT_KEY] = job.infotext()

    def process_batch(self, p, *args, **kwargs):  # the web UI may swap the model between batches
        if runtime._ACTIVE is not None and "get_learned_conditioning" not in vars(shared.sd_model or object()):
            runtime.install(shared.sd_model, runtime._ACTIVE)

    def postprocess(self, p, processed, *args):
        runtime.install(shared.sd_model, None)


def _settings():
    shared.opts.add_option(runtime.ENCODER_SETTING, shared.OptionInfo(
        "", "BabelCLIP: folder of multilingual encoders (empty: models/text_encoders)",
        section=("babelclip", "BabelCLIP")))


def _unshadow(*_args):
    """The web UI keeps each extension's folder on sys.path; BabelCLIP's has a ``models`` package that would
    shadow the one the web UI's interrogator imports (``models.blip``). Its modules are ``babelclip.*``."""
    import os
    import sys

    ours = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the extension folder
    while ours in sys.path:
        sys.path.remove(ours)
    models = sys.modules.get("models")
    if models is not None and os.path.dirname(os.path.dirname(os.path.abspath(getattr(models, "__file__", None)
                                                                                or "/"))) == ours:
        del sys.modules["models"]


def _console_log():
    """BabelCLIP's INFO lines (what it encodes) in the web UI's console, as the web UI prints its own."""
    import logging
    import sys

    if not runtime.log.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        runtime.log.addHandler(handler)
        runtime.log.setLevel(logging.INFO)
        runtime.log.propagate = False


_console_log()
script_callbacks.on_ui_settings(_settings)
script_callbacks.on_before_ui(_unshadow)
script_callbacks.on_app_started(_unshadow)
script_callbacks.on_ui_tabs(training.ui_tab)
script_callbacks.on_app_started(training.add_api_routes)
