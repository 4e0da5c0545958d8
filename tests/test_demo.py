"""python -m babelclip.training demo: end to end on tiny models; the trained adapter must beat the untrained one."""

from __future__ import annotations

import json

from babelclip.training.cli import main


def test_demo_learns_and_says_so(tmp_path, capsys):
    assert main(["demo", "--workdir", str(tmp_path), "--steps", "150"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("BabelCLIP training demo:") and "Good: the trained adapter" in out.split("\n\n")[0]
    comparison = json.loads((tmp_path / "babelclip" / "demo-linear-altclip-kd.comparison.json").read_text())
    untrained, trained, chance = comparison["untrained"], comparison["trained"], comparison["chance"]
    # the same held-out pairs, both adapters: untrained is at chance, trained well above it
    assert comparison["pairs"] == 234 and comparison["languages"] == 9
    assert abs(untrained["mean_recall"] - chance["mean_recall"]) < 0.05
    assert trained["mean_recall"] > untrained["mean_recall"] + 0.08
    assert trained["mean_recall"] > 1.4 * chance["mean_recall"] and trained["r@10"] > untrained["r@10"]
    assert trained["cosine"] > untrained["cosine"] + 0.4
    assert "The pipeline learns" in out and "Finished in" in out
    for line in ("R@1 ", "mean recall", "cosine"):  # the table prints the numbers the JSON holds
        row = next(r for r in out.splitlines() if r.startswith(line))
        key = {"R@1 ": "r@1", "mean recall": "mean_recall", "cosine": "cosine"}[line]
        assert f"{untrained[key]:.3f}" in row and f"{trained[key]:.3f}" in row
    # the adapter it wrote is a normal adapter whose metadata holds the trained evaluation
    from babelclip.models import read_adapter_spec

    spec = read_adapter_spec(tmp_path / "babelclip" / "demo-linear-altclip-kd.safetensors")
    assert json.loads(spec.metadata["babelclip.metrics"])["mean_recall"] == trained["mean_recall"]
