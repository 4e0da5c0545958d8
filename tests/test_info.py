"""python -m babelclip info: every metadata value whole (no silent cut), escaped, and as JSON with --json."""

from __future__ import annotations

import json

from babelclip.__main__ import main

from .conftest import make_adapter_file

# 40 metrics with full-precision values: far more than one line holds (the old output cut it at 200 characters)
METRICS = {f"lang{i:02d}_r@{k}": 1 / (i + k + 3) for i in range(10) for k in (1, 5, 10, 20)}
DESCRIPTION = "An adapter trained for a very long time on a great many prompts, " * 8 + "end of the description."


def _adapter(tmp_path, xlmr, **extra):
    return make_adapter_file(tmp_path / "a.safetensors", xlmr, metrics=METRICS, description=DESCRIPTION,
                             recipe={"name": "altclip-kd", "final_terms": {"pooled_mse": 0.123456789}}, **extra)


def test_info_prints_every_value_whole(tmp_path, xlmr, capsys):
    assert main(["info", str(_adapter(tmp_path, xlmr))]) == 0
    out = capsys.readouterr().out
    for key, value in METRICS.items():  # one key per line, the number whole
        assert f"      {key}: {value!r}\n" in out
    assert " ".join(DESCRIPTION.split()) in " ".join(out.split())  # wrapped, not cut
    assert '"pooled_mse": 0.123456789' in out and "      name: altclip-kd\n" in out
    assert all(len(line) <= 200 for line in out.splitlines())


def test_info_json_is_the_metadata_exactly(tmp_path, xlmr, capsys):
    assert main(["info", "--json", str(_adapter(tmp_path, xlmr))]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["babelclip.metrics"] == METRICS and data["babelclip.description"] == DESCRIPTION
    assert data["babelclip.target"]["family"] == "sd1"


def test_info_escapes_control_characters(tmp_path, xlmr, capsys):
    path = _adapter(tmp_path, xlmr, note="red \x1b[31malert\x1b[0m\rover\u202eeslaf")
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\r" not in out and "\u202e" not in out
    assert "red \\x1b[31malert\\x1b[0m\\rover\\u202eeslaf" in out
