"""Real Automatic1111 / Forge web UI servers for tests: offline, on CPU, bound to 127.0.0.1.

Gated on environment variables naming a checkout of the web UI (never vendored here: both are AGPL):

* ``FORGE_PATH``: a stable-diffusion-webui-forge checkout. It needs ``repositories/huggingface_guess``
  (``launch.py`` clones it during the environment preparation that these tests skip): clone
  ``lllyasviel/huggingface_guess`` there and check out the commit named in ``modules/launch_utils.py``
  (``HUGGINGFACE_GUESS_HASH``). The tests that start the web UI with its UI (the training tab) also need
  ``repositories/stable-diffusion-webui-assets`` (``ASSETS_COMMIT_HASH`` there).
* ``A1111_PATH``: a stable-diffusion-webui checkout, with the ``repositories/`` that its ``launch.py`` clones
  (stable-diffusion-stability-ai, generative-models, k-diffusion, BLIP).

The web UI's Python: ``FORGE_PYTHON`` / ``A1111_PYTHON`` when set (used as it is, only BabelCLIP's
requirements are added), else ``<checkout>/venv`` when it exists, else a venv made once in the test cache
(``<cache>/forge-venv``, ``<cache>/a1111-venv``): ``WEBUI_TORCH`` (default ``torch==2.14.1
torchvision==0.29.1``), then the checkout's ``requirements_versions.txt`` with the fixes listed in
``VENV_FIXES``. BabelCLIP's ``requirements.txt`` goes into it with one ``pip install -r`` (never torch):
the server runs with ``--skip-prepare-environment --skip-install``, so the extension's ``install.py`` does
not run.

Each server gets its own ``--data-dir`` (a temporary folder): ``extensions/<name>`` is a link to this
repository (or to ``extension_source``), ``models/Stable-diffusion`` holds the random SD1.5 single-file
checkpoint, and ``models/babelclip`` and ``models/text_encoders`` are made empty. The checkout itself is
only read (except ``__pycache__`` and an empty ``config_states/`` that the web UI makes).

Usage from ``tests/webui/test_*.py`` (the fixtures must be visible to pytest, e.g. through
``tests/webui/conftest.py`` doing ``from .harness import forge, webui, webui_factory  # noqa: F401``)::

    def test_txt2img(forge):
        r = forge.txt2img({"prompt": "a cat"})
        assert len(r["images"]) == 1
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("BABELCLIP_TEST_CACHE", Path.home() / ".cache" / "babelclip-tests"))
CHECKPOINT_NAME = "sd15-random-v2.safetensors"
DEFAULT_TORCH = "torch==2.14.1 torchvision==0.29.1"

KINDS = {
    "forge": {"path_var": "FORGE_PATH", "python_var": "FORGE_PYTHON", "label": "Forge",
              "cpu_args": ["--always-cpu"]},
    "a1111": {"path_var": "A1111_PATH", "python_var": "A1111_PYTHON", "label": "Automatic1111",
              "cpu_args": ["--use-cpu", "all", "--no-half", "--no-half-vae", "--precision", "full"]},
}
# requirements_versions.txt pins that do not install as they are next to torch 2.14 (see _fix_venv)
VENV_FIXES = [
    # torch 2.14 needs setuptools>=77 (the file pins 69.5.1); >=81 has no pkg_resources, which the web UIs
    # and pytorch_lightning still import
    "setuptools>=77.0.3,<81",
    # Forge's soft-inpainting extension imports it; not in requirements_versions.txt
    "joblib",
]
COMMON_ARGS = ["--skip-prepare-environment", "--skip-install", "--skip-python-version-check",
               "--skip-torch-cuda-test", "--skip-version-check", "--api", "--nowebui",
               "--no-download-sd-model"]


# --------------------------------------------------------------------------------------------- checkout


def webui_checkout(kind: str) -> Path:
    """The checkout named by the kind's environment variable; skips the test when it is unset."""
    spec = KINDS[kind]
    value = os.environ.get(spec["path_var"])
    if not value:
        pytest.skip(f"set {spec['path_var']} to a {spec['label']} checkout to run the {spec['label']} tests")
    root = Path(value).expanduser().resolve()
    if not (root / "launch.py").is_file():
        pytest.fail(f"{spec['path_var']}={value} is not a {spec['label']} checkout (no launch.py)")
    missing = []
    if kind == "forge" and not (root / "repositories" / "huggingface_guess" / "huggingface_guess").is_dir():
        missing.append("repositories/huggingface_guess (clone lllyasviel/huggingface_guess there)")
    if kind == "a1111":
        for name in ("stable-diffusion-stability-ai", "generative-models", "k-diffusion"):
            if not (root / "repositories" / name).is_dir():
                missing.append(f"repositories/{name}")
    if missing:
        pytest.fail(f"{spec['path_var']}={root} lacks what launch.py would clone: {', '.join(missing)}")
    return root


# ------------------------------------------------------------------------------------------------ venv


def _run(cmd: list[str], **kw) -> None:
    print("[harness]", " ".join(map(str, cmd)), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, **kw)


def _digest(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else p.encode())
    return h.hexdigest()[:16]


def _base_python() -> str:
    for name in ("python3.11", "python3.10"):  # the versions the web UIs support
        found = shutil.which(name)
        if found:
            return found
    return sys.executable


def webui_requirements(root: Path, torch_spec: list[str]) -> list[str]:
    """The checkout's ``requirements_versions.txt`` with its setuptools, torch and torchvision lines replaced
    by ``torch_spec`` and :data:`VENV_FIXES`."""
    import re

    replaced = {"setuptools", "torch", "torchvision"} | {re.split(r"[<>=!~ \[]", f, maxsplit=1)[0] for f in VENV_FIXES}
    keep = []
    for line in (root / "requirements_versions.txt").read_text().splitlines():
        req = line.split("#", 1)[0].strip()
        if req and re.split(r"[<>=!~ ;\[]", req, maxsplit=1)[0].lower() not in replaced:
            keep.append(req)
    return keep + list(torch_spec) + VENV_FIXES


def webui_python(kind: str, root: Path) -> Path:
    """The web UI's Python, made ready for the web UI and for BabelCLIP (see the module docstring).

    Made or completed once; a stamp file in the venv records what was installed, so later calls take
    well under a second."""
    spec = KINDS[kind]
    given = os.environ.get(spec["python_var"])
    if given:
        python, own = Path(given), False
    elif (root / "venv" / "bin" / "python").exists():
        python, own = root / "venv" / "bin" / "python", False
    else:
        venv = CACHE / f"{kind}-venv"
        python, own = venv / "bin" / "python", True
        if not python.exists():
            venv.parent.mkdir(parents=True, exist_ok=True)
            _run([_base_python(), "-m", "venv", venv])
    venv_dir = python.parent.parent
    stamp = venv_dir / ".babelclip-harness.json"
    try:
        done = json.loads(stamp.read_text())
    except (OSError, ValueError):
        done = {}
    torch_spec = os.environ.get("WEBUI_TORCH", DEFAULT_TORCH).split()
    pip = [python, "-m", "pip", "install", "--disable-pip-version-check"]
    if own:
        webui_key = _digest((root / "requirements_versions.txt").read_bytes(), *torch_spec, *VENV_FIXES)
        if done.get("webui") != webui_key:
            # one resolve: the checkout's pins less setuptools/torch/torchvision, plus the wanted torch and
            # the fixes (installed as they are, setuptools==69.5.1 makes pip fall back to an older torch)
            reqs = venv_dir / "babelclip-webui-requirements.txt"
            reqs.write_text("\n".join(webui_requirements(root, torch_spec)) + "\n")
            _run(pip + ["-r", reqs], cwd=root)
            done["webui"] = webui_key
            done.pop("babelclip", None)  # the checkout's huggingface-hub pin may have moved it back
            stamp.write_text(json.dumps(done))
    pack_key = _digest((REPO / "requirements.txt").read_bytes())
    if done.get("babelclip") != pack_key:
        # the whole file in one resolve, so that the web UI's pins (transformers, hence huggingface-hub<1)
        # constrain what is added; torch is never listed there
        _run(pip + ["-r", REPO / "requirements.txt"])
        done["babelclip"] = pack_key
        stamp.write_text(json.dumps(done))
    return python


# ------------------------------------------------------------------------------------------ checkpoint

# diffusers -> original (LDM) key names for the SD1.x UNet and VAE. Written from the two layouts'
# module structure (not taken from either web UI); tensors are unchanged except the VAE attention
# projections (linear in diffusers, 1x1 conv in the original).
_RESNET = [("norm1.", "in_layers.0."), ("conv1.", "in_layers.2."), ("norm2.", "out_layers.0."),
           ("conv2.", "out_layers.3."), ("time_emb_proj.", "emb_layers.1."), ("conv_shortcut.", "skip_connection.")]


def _unet_key(k: str, up_with_attention: frozenset = frozenset({1, 2, 3})) -> str:
    """``up_with_attention``: the up blocks that have attention layers (SD1.x/SD2.x: 1-3; SDXL: 0-1): an
    upsampler comes after the attention in those."""
    top = {"time_embedding.linear_1.": "time_embed.0.", "time_embedding.linear_2.": "time_embed.2.",
           "add_embedding.linear_1.": "label_emb.0.0.", "add_embedding.linear_2.": "label_emb.0.2.",
           "conv_in.": "input_blocks.0.0.", "conv_norm_out.": "out.0.", "conv_out.": "out.2."}
    for a, b in top.items():
        if k.startswith(a):
            return b + k[len(a):]
    parts = k.split(".")
    if parts[0] == "down_blocks":
        i, kind, j, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
        if kind == "downsamplers":  # downsamplers.0.conv.*
            return f"input_blocks.{3 * (i + 1)}.0.op." + ".".join(parts[5:])
        prefix = f"input_blocks.{3 * i + j + 1}." + ("0." if kind == "resnets" else "1.")
    elif parts[0] == "up_blocks":
        i, kind, j, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
        if kind == "upsamplers":  # upsamplers.0.conv.*: after the resnet, and after the attention if any
            return f"output_blocks.{3 * i + 2}.{2 if i in up_with_attention else 1}.conv." + ".".join(parts[5:])
        prefix = f"output_blocks.{3 * i + j}." + ("0." if kind == "resnets" else "1.")
    elif parts[0] == "mid_block":
        kind, j, rest = parts[1], int(parts[2]), ".".join(parts[3:])
        prefix = "middle_block.1." if kind == "attentions" else f"middle_block.{2 * j}."
    else:
        raise KeyError(f"unexpected diffusers UNet key {k}")
    if kind == "resnets":
        for a, b in _RESNET:
            if rest.startswith(a):
                rest = b + rest[len(a):]
                break
    return prefix + rest


def _vae_key(k: str) -> str:
    parts = k.split(".")
    side = parts[0]
    if side in ("quant_conv", "post_quant_conv"):
        return k
    rest = parts[1:]
    head = rest[0]
    if head in ("conv_in", "conv_out"):
        return k
    if head == "conv_norm_out":
        return f"{side}.norm_out." + ".".join(rest[1:])
    tail = ".".join(rest[4:])
    tail = tail.replace("conv_shortcut.", "nin_shortcut.")
    if head == "down_blocks":
        i, kind = int(rest[1]), rest[2]
        if kind == "downsamplers":
            return f"{side}.down.{i}.downsample." + tail
        return f"{side}.down.{i}.block.{rest[3]}." + tail
    if head == "up_blocks":
        i, kind = int(rest[1]), rest[2]
        if kind == "upsamplers":
            return f"{side}.up.{3 - i}.upsample." + tail
        return f"{side}.up.{3 - i}.block.{rest[3]}." + tail
    if head == "mid_block":
        kind, j = rest[1], int(rest[2])
        tail = ".".join(rest[3:]).replace("conv_shortcut.", "nin_shortcut.")
        if kind == "resnets":
            return f"{side}.mid.block_{j + 1}." + tail
        for a, b in (("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."),
                     ("to_out.0.", "proj_out."), ("query.", "q."), ("key.", "k."), ("value.", "v."),
                     ("proj_attn.", "proj_out.")):
            if tail.startswith(a):
                tail = b + tail[len(a):]
                break
        return f"{side}.mid.attn_1." + tail
    raise KeyError(f"unexpected diffusers VAE key {k}")


def vae_state_dict(folder: str | Path) -> dict:
    """The diffusers folder's VAE in the original single-file layout (``first_stage_model.*``)."""
    from safetensors.torch import load_file

    out = {}
    for k, v in load_file(Path(folder) / "vae" / "diffusion_pytorch_model.safetensors").items():
        new = _vae_key(k)
        if ".mid.attn_1." in new and new.endswith(".weight") and v.ndim == 2:
            v = v.reshape(*v.shape, 1, 1)
        out["first_stage_model." + new] = v.contiguous()
    return out


def sd15_state_dict_from_diffusers(folder: str | Path) -> dict:
    """The original single-file SD1.x state dict of a diffusers-layout folder (unet, vae, text_encoder)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    out = {}
    for k, v in load_file(folder / "unet" / "diffusion_pytorch_model.safetensors").items():
        out["model.diffusion_model." + _unet_key(k)] = v
    out.update(vae_state_dict(folder))
    for k, v in load_file(folder / "text_encoder" / "model.safetensors").items():
        out["cond_stage_model.transformer." + k] = v  # transformers CLIPTextModel keys (text_model.*)
    return out


def sd15_checkpoint() -> Path:
    """The random SD1.5 of the integration tests (tests/integration/sd15.py, same weights) as one original-
    layout .safetensors, built once into the test cache (about 2 GB, about 15 s from the diffusers folder)."""
    target = CACHE / CHECKPOINT_NAME
    if target.exists():
        return target
    from safetensors.torch import save_file

    from ..integration.sd15 import build_sd15

    folder = build_sd15(str(CACHE / "sd15-random-v2"))
    tmp = target.with_name(target.name + ".partial")
    save_file(sd15_state_dict_from_diffusers(folder), str(tmp), metadata={"format": "pt"})
    os.replace(tmp, target)
    return target


# ---------------------------------------------------------------------------------------------- server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        try:
            os.symlink(src, dst)
        except OSError:
            shutil.copy2(src, dst)


def prepare_data_dir(data_dir: Path, checkpoint: Path, extension_source: Path = REPO,
                     extension_name: str = "babelclip") -> Path:
    """A web UI ``--data-dir``: the extension linked in ``extensions/``, the checkpoint in
    ``models/Stable-diffusion``, empty ``models/babelclip`` and ``models/text_encoders``."""
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "extensions").mkdir(exist_ok=True)
    link = data_dir / "extensions" / extension_name
    if not link.exists():
        link.symlink_to(Path(extension_source).resolve(), target_is_directory=True)
    for sub in ("Stable-diffusion", "babelclip", "text_encoders"):
        (data_dir / "models" / sub).mkdir(parents=True, exist_ok=True)
    ckpt = data_dir / "models" / "Stable-diffusion" / checkpoint.name
    if not ckpt.exists():
        _link_or_copy(checkpoint, ckpt)
    return data_dir


class WebUIError(AssertionError):
    """A request that the web UI answered with an HTTP error; ``status`` and ``body`` (parsed JSON if any)."""

    def __init__(self, status: int, body, log: str):
        self.status, self.body = status, body
        super().__init__(f"HTTP {status}: {body}\n--- server log ---\n{log}")


class WebUIServer:
    """A web UI (``launch.py --api --nowebui``) serving on 127.0.0.1 with its own data dir."""

    def __init__(self, kind: str, root: Path, python: Path, data_dir: Path, checkpoint: Path,
                 extra_args: list[str] | None = None, env: dict | None = None, startup_timeout: float = 300,
                 with_ui: bool = False):
        self.kind, self.root, self.python, self.data_dir = kind, root, python, data_dir
        self.checkpoint_name = checkpoint.name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = data_dir / "server.log"
        ckpt = data_dir / "models" / "Stable-diffusion" / checkpoint.name
        common = [a for a in COMMON_ARGS if not (with_ui and a == "--nowebui")]
        args = [str(python), "launch.py", *common, *KINDS[kind]["cpu_args"],
                "--server-name", "127.0.0.1", "--port", str(self.port),
                "--data-dir", str(data_dir), "--ckpt", str(ckpt), *(extra_args or [])]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "HF_HUB_DISABLE_TELEMETRY": "1", "DO_NOT_TRACK": "1", "GRADIO_ANALYTICS_ENABLED": "False",
               **(env or {})}
        env.pop("COMMANDLINE_ARGS", None)  # read by modules/paths_internal.py and appended to sys.argv
        self.started = time.monotonic()
        self._log = open(self.log_path, "wb")  # noqa: SIM115  (closed by stop())
        self.proc = subprocess.Popen(args, cwd=root, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        try:
            self._wait_ready(startup_timeout)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - self.started

    # -- process
    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, n: int = 80) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _wait_ready(self, timeout: float) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if not self.alive():
                raise RuntimeError(f"{self.kind} exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                self.get("/sdapi/v1/samplers", timeout=5)
                return
            except WebUIError as e:  # with the UI, gradio serves before the web UI adds its API routes
                if e.status == 401:  # --api-auth: the API answers
                    return
                if e.status != 404:
                    raise
                time.sleep(0.5)
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        raise TimeoutError(f"{self.kind} did not start in {timeout}s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.alive():
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if not self._log.closed:
            self._log.close()

    # -- HTTP
    def _request(self, method: str, path: str, body=None, timeout: float = 600):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                raw = r.read()
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                parsed = json.loads(raw)
            except ValueError:
                parsed = raw.decode(errors="replace")
            raise WebUIError(e.code, parsed, self.log_tail(40)) from None
        return json.loads(raw) if raw else None

    def get(self, path: str, timeout: float = 60):
        return self._request("GET", path, timeout=timeout)

    def post(self, path: str, body: dict, timeout: float = 600):
        """POST JSON; raises :class:`WebUIError` (with ``status`` and ``body``) on an HTTP error."""
        return self._request("POST", path, body, timeout=timeout)

    def txt2img(self, payload: dict | None = None, timeout: float = 600) -> dict:
        """``/sdapi/v1/txt2img`` with cheap defaults (64x64, 1 step, Euler, seed 1) under ``payload``."""
        body = {"prompt": "", "negative_prompt": "", "steps": 1, "width": 64, "height": 64, "seed": 1,
                "sampler_name": "Euler", "scheduler": "Automatic", "cfg_scale": 7, "batch_size": 1,
                "send_images": True, "save_images": False, **(payload or {})}
        return self.post("/sdapi/v1/txt2img", body, timeout=timeout)

    @staticmethod
    def images(response: dict):
        """The response's images as numpy uint8 arrays (H, W, 3)."""
        import numpy as np
        from PIL import Image

        return [np.asarray(Image.open(io.BytesIO(base64.b64decode(b.split(",", 1)[-1]))).convert("RGB"))
                for b in response["images"]]

    @staticmethod
    def info(response: dict) -> dict:
        """The response's ``info`` (a JSON string in the API) parsed."""
        return json.loads(response["info"])


def start_webui(kind: str, data_dir: Path, extension_source: Path = REPO, extension_name: str = "babelclip",
                extra_args: list[str] | None = None, env: dict | None = None, with_ui: bool = False,
                checkpoint: Path | None = None) -> WebUIServer:
    """Everything in one call: checkout (skips when its variable is unset), Python, checkpoint, data dir,
    server. The caller stops the server."""
    root = webui_checkout(kind)
    python = webui_python(kind, root)
    ckpt = checkpoint or sd15_checkpoint()
    prepare_data_dir(data_dir, ckpt, extension_source, extension_name)
    return WebUIServer(kind, root, python, data_dir, ckpt, extra_args=extra_args, env=env, with_ui=with_ui)


# --------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def webui_factory(tmp_path_factory):
    """``start(kind, **kw) -> WebUIServer`` (see :func:`start_webui`); every server is stopped at the end."""
    servers = []

    def start(kind: str = "forge", **kw) -> WebUIServer:
        data_dir = kw.pop("data_dir", None) or tmp_path_factory.mktemp(f"{kind}-data")
        server = start_webui(kind, Path(data_dir), **kw)
        servers.append(server)
        return server

    yield start
    for s in servers:
        s.stop()


@pytest.fixture(scope="module")
def forge(tmp_path_factory):
    """A Forge server (``FORGE_PATH``) with this repository as ``extensions/babelclip``."""
    server = start_webui("forge", tmp_path_factory.mktemp("forge-data"))
    yield server
    server.stop()


@pytest.fixture(scope="module", params=list(KINDS), ids=list(KINDS))
def webui(request, tmp_path_factory):
    """Each web UI whose variable is set (``FORGE_PATH``, ``A1111_PATH``); skipped per kind otherwise."""
    server = start_webui(request.param, tmp_path_factory.mktemp(f"{request.param}-data"))
    yield server
    server.stop()
