"""Issue 10, item 3: a prompt that stock CLIPTextEncode accepts is accepted by BabelCLIP Text Encode.

One list of awkward prompts (pasted from prompt sites, other tools and chats) goes through both nodes in one
real ComfyUI server, each in the same cheap graph (CLIPLoader -> encode -> SD_4XUpscale_Conditioning ->
SaveLatent). Both must succeed. The only prompts BabelCLIP refuses are its documented safety limits
(SECURITY.md, "Prompts"): there it ends with InvalidPromptError whatever the stock node does.
strict_syntax=True keeps the errors for unmatched parentheses and weights outside -2..10.
"""

from __future__ import annotations

import pytest

from .cheap import ADAPTER_NODE, CLIP_NODE, ENCODE_NODE, ENCODER_NODE, cheap_graph, execution_error, link_clip

pytestmark = pytest.mark.integration

# id -> prompt. The stock node accepts each one, and so must BabelCLIP (same outcome).
AWKWARD = {
    "emoticon": "emoticon :) smile",
    "unclosed": "a red cat (sitting on a wooden roof",
    "unmatched-close": "a red cat) on a roof",
    "sad-faces": ":( sad face :( (very:1.2) sad",
    "prompt-site-weights": "(masterpiece:1.2), best quality, (a red cat:1.1) on a roof, ((sunset))",
    "weight-not-a-number": "(a red cat:oops) on a roof",
    "weight-empty": "(a red cat:) on a roof",
    "colon-first": "(:1.5) cat",
    "two-colons": "(a red cat:1.2:1.3)",
    "one-close-short": "((a red cat:1.2) on a roof",
    "open-inside-group": "a cat (on (a roof)",
    "close-then-open": "a cat) (on a roof",
    "escaped": r"\(escaped\) cat \\( and \) on a roof",
    "weight-25": "(a red cat:25) on a roof",
    "weight-minus-5": "(a red cat:-5) on a roof",
    "weight-zero": "(a red cat:0) on a roof",
    "weight-1e300": "(cat:1e300)",
    "forty-open": "(" * 40 + "cat",
    "forty-close": "cat" + ")" * 40,
    "nested-16": "(" * 16 + "cat" + ")" * 16,
    "empty": "",
    "whitespace": " \t\n ",
    "several-chunks": "(a red cat:1.1) on a wooden roof at sunset, " * 20,  # ~900 characters: chunked by both
    "tabs-and-lines": "a cat\n\t(on a roof:1.1)\r\nat dusk",
    "mixed-scripts": "猫 (кошка:1.2) قطة on a roof 🐈",
    "embedding-syntax": "embedding:not-there a red cat",
    "dynamic-prompt-braces": "{red|blue} cat [on|under] a roof",
    "backslashes": "C:\\path\\to\\cat \\ (roof)",
}

# id -> (prompt, what BabelCLIP's message names): the documented limits, BabelCLIP refuses in both modes.
LIMITS = {
    "weight-1e309": ("(cat:1e309) on a roof", "not a finite number"),
    "weight-nan": ("(cat:nan) on a roof", "not a finite number"),
    "weight-inf": ("(cat:inf) on a roof", "not a finite number"),
    "nested-17": ("(" * 17 + "cat" + ")" * 17, "more than 16 deep"),
    "12000-chars": ("a red cat on a roof " * 600, "the limit is 10,000"),
    "nul": ("a red cat\x00 on a roof", "NUL"),
    "escape-sequence": ("a cat\x1b[31m red", "U+001B"),
    "bidi-override": ("a red cat \u202eon a roof", "U+202E"),
    "lone-surrogate": ("a red cat \ud800 on a roof", "surrogate"),
    "combining-flood": ("a red ca" + "t" + "\u0301" * 200, "combining marks"),
}


def stock_graph(text: str, prefix: str) -> dict:
    """cheap_graph with stock CLIPTextEncode in place of BabelCLIP Text Encode (same CLIP, same output)."""
    g = cheap_graph(text, prefix=prefix)
    del g[ENCODER_NODE], g[ADAPTER_NODE]
    g[ENCODE_NODE] = {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": [CLIP_NODE, 0]}}
    return g


def babel_graph(text: str, prefix: str, strict: bool | None = None) -> dict:
    g = cheap_graph(text, prefix=prefix)
    if strict is not None:
        g[ENCODE_NODE]["inputs"]["strict_syntax"] = strict
    return g


def outcome(comfy, graph: dict) -> str:
    """'success', or the class name of the exception the node raised."""
    entry = comfy.run(graph)
    if entry["status"]["status_str"] == "success":
        return "success"
    return execution_error(entry)["exception_type"].rsplit(".", 1)[-1]


def error_message(comfy, graph: dict) -> str:
    entry = comfy.run(graph)
    assert entry["status"]["status_str"] == "error", entry["status"]
    err = execution_error(entry)
    assert err["node_id"] == ENCODE_NODE and err["exception_type"].endswith("InvalidPromptError"), err
    return err["exception_message"]


@pytest.fixture(scope="module")
def server(comfy, sd15_folder):
    link_clip(comfy.root, sd15_folder)
    return comfy


@pytest.mark.parametrize("key", list(AWKWARD))
def test_babelclip_accepts_what_stock_clip_text_encode_accepts(server, key):
    text = AWKWARD[key]
    stock = outcome(server, stock_graph(text, f"stock-{key}"))
    babel = outcome(server, babel_graph(text, f"babel-{key}"))
    assert stock == "success", f"{key}: stock CLIPTextEncode failed with {stock}: pick another prompt"
    assert babel == stock, f"{key}: stock CLIPTextEncode gave {stock}, BabelCLIP Text Encode gave {babel}"
    assert server.alive()


@pytest.mark.parametrize("key", list(LIMITS))
def test_documented_limits_are_the_only_prompts_babelclip_refuses(server, key):
    """The stock node's outcome does not matter here (it accepts most of them): these limits protect the server."""
    text, needle = LIMITS[key]
    for strict in (None, True):
        message = error_message(server, babel_graph(text, f"babel-{key}", strict))
        assert needle in message, (key, message)
    assert server.alive(), server.log_tail()


def test_the_server_log_names_what_was_read_as_text(server):
    before = server.log_path.read_text(errors="replace")
    assert outcome(server, babel_graph("a (red:1.2) cat) on a roof", "babel-log")) == "success"
    new = server.log_path.read_text(errors="replace")[len(before):]
    assert "1 parenthesis was read as text" in new and "')' at position 15" in new, new[-2000:]


@pytest.mark.parametrize("text,needle", [
    ("a red cat (sitting on a wooden roof", "unclosed '('"),
    ("a red cat) on a roof", "unmatched ')'"),
    ("emoticon :) smile", "unmatched ')'"),
    ("(a red cat:25) on a roof", "outside -2..10"),
])
def test_strict_syntax_keeps_the_errors(server, text, needle):
    name = "".join(c for c in text if c.isalnum())[:24]
    message = error_message(server, babel_graph(text, f"strict-{name}", strict=True))
    assert needle in message and "strict_syntax off" in message, message
    assert outcome(server, babel_graph(text, f"lenient-{name}", strict=False)) == "success"
