"""Headless Chromium pictures of the running explorer: the browser test and ``docs/explorer.png``.

The explorer is started with ``nas app SOURCE --port P --headless`` (its own process, stopped by its pid) and
Debian's ``chromium`` takes the screenshot with its command-line ``--screenshot`` mode. That mode cannot wait
for a Streamlit page (the page talks over a websocket that virtual time does not wait for), so
:func:`capture` takes pictures until one shows the charts, or gives up at a deadline. A picture "shows the
charts" when it holds enough pixels of the explorer's marker colours (the Pareto front's red, the feasible
blue) and many distinct colours; a blank page, Streamlit's skeleton or an error page has neither.

Make the README picture (after a real ``nas search``)::

    python -m nas.app.screenshot runs/<study> docs/explorer.png --size 1600x1900
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

ENV_CHROMIUM = "TINYNAS_CHROMIUM"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars")
FRONT_RGB = (214, 39, 40)      # nas.app.figures.STATUS_COLOURS["front"]
FEASIBLE_RGB = (31, 119, 180)  # nas.app.figures.STATUS_COLOURS["feasible"]


def find_chromium() -> str | None:
    """``$TINYNAS_CHROMIUM`` or the first of chromium / chromium-browser / google-chrome on the PATH."""
    env = os.environ.get(ENV_CHROMIUM)
    if env:
        return env if Path(env).is_file() else shutil.which(env)
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serve(source: str, port: int | None = None, *, log: Path | None = None, timeout: float = 60.0,
          extra: Sequence[str] = ()) -> Iterator[str]:
    """Run ``nas app SOURCE`` on a free local port; yields its URL once ``/_stcore/health`` answers."""
    port = port or free_port()
    cmd = [sys.executable, "-m", "nas.cli", "app", str(source), "--port", str(port), "--headless", *extra]
    out = open(log, "wb") if log else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"nas app exited with status {proc.returncode} before serving"
                                   + (f"; see {log}" if log else ""))
            try:
                with urllib.request.urlopen(url + "_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"nas app did not answer on {url} within {timeout:.0f} s")
            time.sleep(0.3)
        yield url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if not isinstance(out, int):  # our log file, not subprocess.DEVNULL
            out.close()


def chromium_command(chromium: str, url: str, *, screenshot: Path | None = None, dump_dom: bool = False,
                     size: tuple[int, int] = (1600, 1900), budget_ms: int = 30000, profile: Path) -> list[str]:
    cmd = [chromium, *FLAGS, f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}",
           f"--virtual-time-budget={budget_ms}"]
    if screenshot is not None:
        cmd.append(f"--screenshot={screenshot}")
    if dump_dom:
        cmd.append("--dump-dom")
    return [*cmd, url]


@dataclass(frozen=True)
class Picture:
    path: Path
    width: int
    height: int
    colours: int            # distinct RGB colours
    front_pixels: int       # pixels of the Pareto front's red
    feasible_pixels: int    # pixels of the feasible blue
    attempts: int
    seconds: float
    charts: int | None = None  # Plotly charts drawn (DevTools capture only)

    @property
    def charts_drawn(self) -> bool:
        return self.front_pixels >= 150 and self.colours >= 500


def inspect(path: Path, attempts: int = 1, seconds: float = 0.0) -> Picture:
    """Colour statistics of a screenshot (read with PIL)."""
    from PIL import Image

    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB"), dtype=np.int32)
    h, w, _ = rgb.shape
    packed = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    colours = int(len(np.unique(packed)))

    def near(c: tuple[int, int, int], tol: int = 12) -> int:
        return int((np.abs(rgb - np.array(c)).max(axis=-1) <= tol).sum())

    return Picture(path, w, h, colours, near(FRONT_RGB), near(FEASIBLE_RGB), attempts, seconds)


def capture(url: str, out: Path, *, chromium: str | None = None, size: tuple[int, int] = (1600, 1900),
            deadline_s: float = 120.0, budget_ms: int = 30000, settle: int = 1) -> Picture:
    """Screenshots of ``url`` until one shows the charts (then ``settle`` more, keeping the last that does).

    Raises RuntimeError when none does before the deadline (the last picture is left at ``out`` to look at).
    """
    chromium = chromium or find_chromium()
    if not chromium:
        raise RuntimeError("no Chromium found (apt-get install chromium, or set $TINYNAS_CHROMIUM)")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    attempts, good = 0, 0
    last: Picture | None = None
    with tempfile.TemporaryDirectory(prefix="tinynas-chromium-") as tmp:
        shot = Path(tmp) / "shot.png"
        while True:
            attempts += 1
            shot.unlink(missing_ok=True)
            cmd = chromium_command(chromium, url, screenshot=shot, size=size, budget_ms=budget_ms,
                                   profile=Path(tmp) / "profile")
            subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                           timeout=120, check=False)
            if shot.is_file():
                last = inspect(shot, attempts, time.monotonic() - t0)
                if last.charts_drawn:
                    shutil.copyfile(shot, out)
                    good += 1
                    if good > settle:
                        return inspect(out, attempts, time.monotonic() - t0)
                elif good:
                    return inspect(out, attempts, time.monotonic() - t0)
            if time.monotonic() - t0 > deadline_s:
                if last is not None:
                    shutil.copyfile(last.path, out)
                raise RuntimeError(f"after {attempts} screenshots in {time.monotonic() - t0:.0f} s no picture showed "
                                   f"the charts" + (f" (last: {last.colours} colours, {last.front_pixels} front "
                                                    f"pixels; saved at {out})" if last else " (no picture written)"))
            time.sleep(1.0)


READY_PROBE = """(() => {
  const n = document.querySelectorAll('.js-plotly-plot').length;
  const running = !!document.querySelector('[data-testid="stStatusWidget"]');
  const skeleton = !!document.querySelector('[data-testid="stSkeleton"]');
  const errors = document.querySelectorAll('[data-testid="stException"], [data-testid="stAlertContentError"]').length;
  return JSON.stringify({n: n, running: running, skeleton: skeleton, errors: errors,
                         height: document.documentElement.scrollHeight});
})()"""


class DevTools:
    """Headless Chromium driven through its DevTools protocol (with ``websockets``, which Streamlit depends on):
    navigate, wait in real time, evaluate JavaScript, move and click the mouse, take screenshots."""

    def __init__(self, chromium: str | None = None, size: tuple[int, int] = (1600, 1900)) -> None:
        found = chromium or find_chromium()
        if not found:
            raise RuntimeError("no Chromium found (apt-get install chromium, or set $TINYNAS_CHROMIUM)")
        self.chromium: str = found
        self.size = size
        self._ids = iter(range(1, 1 << 30))

    def __enter__(self) -> "DevTools":
        import re

        from websockets.sync.client import connect

        self._tmp = tempfile.TemporaryDirectory(prefix="tinynas-chromium-")
        cmd = [self.chromium, *FLAGS, f"--user-data-dir={Path(self._tmp.name) / 'profile'}",
               f"--window-size={self.size[0]},{self.size[1]}", "--remote-debugging-port=0", "about:blank"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        stderr = self.proc.stderr
        assert stderr is not None  # piped above
        try:
            ws_url = None
            while ws_url is None:
                line = stderr.readline().decode("utf-8", "replace")
                if not line and self.proc.poll() is not None:
                    raise RuntimeError(f"chromium exited with status {self.proc.returncode} before DevTools started")
                m = re.search(r"DevTools listening on (ws://\S+)", line)
                ws_url = m.group(1) if m else None
            self._stack = contextlib.ExitStack()
            self.ws = self._stack.enter_context(connect(ws_url, max_size=None, open_timeout=30))
            target = self.call("Target.createTarget", {"url": "about:blank"}, browser=True)["targetId"]
            self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True},
                                     browser=True)["sessionId"]
            self.call("Emulation.setDeviceMetricsOverride", {"width": self.size[0], "height": self.size[1],
                                                             "deviceScaleFactor": 1, "mobile": False})
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        stack = getattr(self, "_stack", None)
        if stack is not None:
            stack.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._tmp.cleanup()

    def call(self, method: str, params: dict | None = None, *, browser: bool = False) -> dict:
        import json

        msg_id = next(self._ids)
        msg: dict = {"id": msg_id, "method": method, "params": params or {}}
        if not browser:
            msg["sessionId"] = self.session
        self.ws.send(json.dumps(msg))
        while True:
            reply = json.loads(self.ws.recv(timeout=90))
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise RuntimeError(f"DevTools {method}: {reply['error']}")
                return reply.get("result", {})

    def evaluate(self, expression: str) -> object:
        res = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        return res.get("result", {}).get("value")

    def navigate(self, url: str) -> None:
        self.call("Page.navigate", {"url": url})

    def wait_ready(self, charts: int, timeout_s: float = 180.0, idle_s: float = 2.0) -> dict:
        """Wait until ``charts`` Plotly charts are drawn and Streamlit has been idle ``idle_s`` seconds."""
        import json

        t0 = time.monotonic()
        ready_since = None
        while True:
            state = json.loads(str(self.evaluate(READY_PROBE) or "{}"))
            if os.environ.get("TINYNAS_SCREENSHOT_DEBUG"):
                print(f"{time.monotonic() - t0:6.1f} s {state}", flush=True)
            if state.get("errors") and not state.get("running"):
                raise RuntimeError(f"the page shows an error: {state}")
            ready = state.get("n", 0) >= charts and not state.get("running") and not state.get("skeleton")
            ready_since = (ready_since or time.monotonic()) if ready else None
            if ready_since and time.monotonic() - ready_since > idle_s:
                return state
            if time.monotonic() - t0 > timeout_s:
                raise RuntimeError(f"the page was not ready after {timeout_s:.0f} s: {state}")
            time.sleep(0.5)

    def click(self, x: float, y: float) -> None:
        """Move the mouse to (x, y) (Plotly picks the point under the cursor on hover), then click."""
        self.call("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": x - 3, "y": y})
        time.sleep(0.2)
        self.call("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": x, "y": y})
        time.sleep(0.8)
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1})

    def screenshot(self, out: Path, full_page: bool = False, height: int | None = None) -> Path:
        import base64

        params: dict = {"format": "png"}
        if full_page:
            params.update(captureBeyondViewport=True, clip={"x": 0, "y": 0, "width": self.size[0], "scale": 1,
                                                            "height": max(self.size[1], int(height or 0))})
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", params)["data"]))
        return out


def capture_devtools(url: str, out: Path, *, chromium: str | None = None, size: tuple[int, int] = (1600, 1900),
                     charts: int = 4, timeout_s: float = 180.0, full_page: bool = False) -> Picture:
    """One screenshot taken when the page is ready (:class:`DevTools`): for pages that take longer to draw than
    ``--screenshot`` can wait (thousands of trials), and for the README picture."""
    t0 = time.monotonic()
    with DevTools(chromium, size) as dt:
        dt.navigate(url)
        state = dt.wait_ready(charts, timeout_s)
        dt.screenshot(out, full_page, state.get("height"))
    pic = inspect(Path(out), 1, time.monotonic() - t0)
    return dataclasses.replace(pic, charts=int(state.get("n", 0)))


# A point of the memory-vs-metric chart (the second Plotly chart; a Pareto-front one if possible) that is not the
# trial shown and has no other point within 14 px: its trial number and where it is on the page.
FRONT_POINT = """(() => {
  const gd = document.querySelectorAll('.js-plotly-plot')[1];
  gd.scrollIntoView({block: 'center'});
  const picker = document.querySelector('input[aria-label="Trial"]');
  const current = picker ? picker.value : '';
  const box = gd.getBoundingClientRect();
  const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
  const all = [];
  gd._fullData.forEach(tr => { for (let i = 0; i < tr.x.length; i++) {
    all.push({trial: Number(tr.customdata[i]), front: tr.name === 'Pareto front',
              x: box.left + xa._offset + xa.l2p(tr.x[i]), y: box.top + ya._offset + ya.l2p(tr.y[i])}); } });
  all.sort((a, b) => (b.front ? 1 : 0) - (a.front ? 1 : 0));  // front points first
  for (const p of all) {
    if (current.includes('trial ' + p.trial + ' ')) continue;
    const alone = all.every(q => q.trial === p.trial || Math.hypot(q.x - p.x, q.y - p.y) > 14);
    if (alone) return JSON.stringify({trial: p.trial, x: p.x, y: p.y, current: current});
  }
  return JSON.stringify({trial: null, current: current});
})()"""

PICKED = """(() => { const p = document.querySelector('input[aria-label="Trial"]'); return p ? p.value : ''; })()"""


def click_selects_trial(url: str, *, chromium: str | None = None, timeout_s: float = 180.0) -> tuple[int, str]:
    """Click a point (not the trial shown; a Pareto-front one if possible) in the memory-vs-metric chart and wait
    until the trial picker shows it. Returns (trial number clicked, the picker's text afterwards)."""
    with DevTools(chromium, (1400, 1400)) as dt:
        dt.navigate(url)
        dt.wait_ready(4, timeout_s)
        return click_a_point(dt)


def click_a_point(dt: DevTools, timeout_s: float = 60.0, tries: int = 3) -> tuple[int, str]:
    """On a page that is ready: click a point of the memory-vs-metric chart, wait for its trial page.

    The click is tried again (up to ``tries`` times) when the picker has not changed 15 s later: on a loaded
    machine Plotly may not have finished the hover that tells it which point is under the mouse.
    """
    import json

    t0 = time.monotonic()
    target: dict = {}
    text = ""
    for _ in range(tries):
        json.loads(str(dt.evaluate(FRONT_POINT)))  # scrolls the chart into view
        time.sleep(0.5)
        target = json.loads(str(dt.evaluate(FRONT_POINT)))
        if target.get("trial") is None:
            raise RuntimeError(f"no other point to click: {target}")
        dt.click(target["x"], target["y"])
        t_click = time.monotonic()
        while time.monotonic() - t_click < 15 and time.monotonic() - t0 < timeout_s:
            text = str(dt.evaluate(PICKED) or "")
            if f"trial {target['trial']} " in text:
                return int(target["trial"]), text
            time.sleep(0.5)
    raise RuntimeError(f"clicking trial {target.get('trial')} at ({target.get('x', 0):.0f}, {target.get('y', 0):.0f}) "
                       f"{tries} times did not select it; the picker shows {text!r}")


def page_dom(url: str, *, chromium: str | None = None, budget_ms: int = 30000) -> str:
    """The page's DOM after ``budget_ms`` of virtual time (``chromium --dump-dom``)."""
    chromium = chromium or find_chromium()
    if not chromium:
        raise RuntimeError("no Chromium found")
    with tempfile.TemporaryDirectory(prefix="tinynas-chromium-") as tmp:
        cmd = chromium_command(chromium, url, dump_dom=True, budget_ms=budget_ms, profile=Path(tmp) / "profile")
        res = subprocess.run(cmd, capture_output=True, stdin=subprocess.DEVNULL, timeout=120, check=False)
    return res.stdout.decode("utf-8", "replace")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m nas.app.screenshot", description="screenshot of the explorer on a run")
    p.add_argument("source", help="run directory (or storage URL)")
    p.add_argument("out", help="PNG to write")
    p.add_argument("--size", default="1600x1900", help="window WIDTHxHEIGHT (default 1600x1900)")
    p.add_argument("--devtools", action="store_true",
                   help="wait for the page through Chromium's DevTools protocol (large runs) instead of retrying "
                        "--screenshot")
    args = p.parse_args(argv)
    w, h = (int(v) for v in args.size.lower().split("x"))
    with serve(args.source) as url:
        if args.devtools:
            pic = capture_devtools(url, Path(args.out), size=(w, h))
        else:
            pic = capture(url, Path(args.out), size=(w, h), settle=2)
    print(f"{args.out}: {pic.width}x{pic.height}, {pic.colours} colours, {pic.front_pixels} front pixels, "
          f"{pic.attempts} screenshots in {pic.seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
