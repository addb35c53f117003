"""Open a page in headless Chromium and report what a reader would see go wrong.

Talks to Chromium over the DevTools protocol on ``--remote-debugging-pipe`` (file descriptors
3 and 4, NUL-separated JSON), with no Python dependency beyond the standard library. Unlike
scraping ``--enable-logging`` output, the protocol reports each console error, uncaught
exception, failed load and network request as a structured event, and lets the test evaluate
JavaScript in the page (to count broken images and empty figures) and take a screenshot.

The browser runs with a fresh profile in a temporary directory and with every background
service off, so it makes no request of its own; any network request the page makes is
recorded and is a failure for the caller.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Where Debian's ``chromium`` package installs the browser (``.ci/run`` installs it).
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome")

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--mute-audio",
    "--hide-scrollbars",
    "--remote-debugging-pipe",
)

#: Counts read in the page once it has settled (see ``report.js``: ``data-report-status``).
_PROBE = """(() => {
  const figs = Array.from(document.querySelectorAll("div.plot"));
  const empty = figs.filter(d => {
    const traces = d.querySelectorAll("g.trace, g.barlayer g.point, path.js-line, g.points path");
    const box = d.getBoundingClientRect();
    return !(d.data && d.data.length) || traces.length === 0 || box.width < 50 || box.height < 50;
  }).map(d => d.getAttribute("data-spec"));
  const broken = Array.from(document.images)
    .filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src.slice(0, 80));
  return JSON.stringify({
    status: document.documentElement.getAttribute("data-report-status"),
    figures: figs.length,
    empty: empty,
    broken_images: broken,
    images: document.images.length,
    tables: document.querySelectorAll("table").length,
    height: Math.ceil(document.documentElement.scrollHeight),
  });
})()"""


def find_chromium() -> str | None:
    """Path of a Chromium binary, or None."""
    for name in CHROMIUM_CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class PageReport:
    """What happened while a page loaded and drew.

    Attributes:
        status: the page's ``data-report-status`` ("ok" once every figure was drawn).
        figures, tables, images: counts in the page.
        empty_figures: figures with no trace drawn (their ``data-spec`` ids).
        broken_images: images that failed to decode.
        console_errors: console errors, uncaught exceptions and error log entries.
        requests: URLs requested other than the page itself and ``data:`` URIs.
        screenshot: the PNG written.
    """

    status: str | None = None
    figures: int = 0
    tables: int = 0
    images: int = 0
    empty_figures: list[str] = field(default_factory=list)
    broken_images: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    screenshot: Path | None = None


class _Pipe:
    """The DevTools protocol over a pair of pipes: send a command, read events and replies."""

    def __init__(self, to_browser: int, from_browser: int) -> None:
        self._w = os.fdopen(to_browser, "wb", buffering=0)
        self._r = os.fdopen(from_browser, "rb", buffering=0)
        self._buf = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def close(self) -> None:
        for f in (self._w, self._r):
            try:
                f.close()
            except OSError:
                pass

    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buf:
            if time.monotonic() > deadline:
                raise TimeoutError("no reply from chromium")
            chunk = self._r.read(65536)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def send(self, method: str, params: dict[str, Any] | None = None, *,
             session: str | None = None, timeout_s: float = 30.0) -> dict[str, Any]:  # fmt: skip
        """Send a command and wait for its reply; events seen meanwhile are kept."""
        self._next_id += 1
        msg: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        self._w.write(json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout_s
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method: str, *, timeout_s: float) -> dict[str, Any]:
        """Wait for an event (one already received counts)."""
        for ev in self.events:
            if ev.get("method") == method:
                return ev
        deadline = time.monotonic() + timeout_s
        while True:
            ev = self._read_message(deadline)
            self.events.append(ev)
            if ev.get("method") == method:
                return ev


def open_page(page: Path, screenshot: Path, *, chromium: str, timeout_s: float = 60.0,
              width_px: int = 1280) -> PageReport:  # fmt: skip
    """Load ``page`` (a local file) in headless Chromium, wait until it has drawn, inspect it.

    Returns:
        A :class:`PageReport`; the screenshot (full page, PNG) is written to ``screenshot``.
    """
    page = Path(page).resolve()
    url = page.as_uri()
    profile = tempfile.mkdtemp(prefix="servesim-chromium-")
    to_r, to_w = os.pipe()  # we write commands -> chromium reads fd 3
    from_r, from_w = os.pipe()  # chromium writes fd 4 -> we read

    def _child_fds() -> None:
        # Move both ends out of the way first, in case either already is fd 3 or 4.
        r, w = os.dup(to_r), os.dup(from_w)
        r, w = os.dup2(r, 100), os.dup2(w, 101)
        os.dup2(r, 3)
        os.dup2(w, 4)

    proc = subprocess.Popen(
        [chromium, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width_px},900",
         "about:blank"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        preexec_fn=_child_fds, pass_fds=(3, 4),  # kept open: close_fds runs after preexec_fn
    )  # fmt: skip
    os.close(to_r)
    os.close(from_w)
    pipe = _Pipe(to_w, from_r)
    report = PageReport()
    try:
        target = pipe.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = pipe.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        for domain in ("Runtime", "Log", "Page", "Network"):
            pipe.send(f"{domain}.enable", session=session)
        pipe.send("Page.navigate", {"url": url}, session=session)
        pipe.wait_event("Page.loadEventFired", timeout_s=timeout_s)
        deadline = time.monotonic() + timeout_s
        probe: dict[str, Any] = {}
        while time.monotonic() < deadline:
            res = pipe.send("Runtime.evaluate", {"expression": _PROBE, "returnByValue": True},
                            session=session)  # fmt: skip
            probe = json.loads(res["result"]["value"])
            if probe["status"] not in (None, "loading"):
                break
            time.sleep(0.1)
        report.status = probe.get("status")
        report.figures = int(probe.get("figures", 0))
        report.tables = int(probe.get("tables", 0))
        report.images = int(probe.get("images", 0))
        report.empty_figures = list(probe.get("empty", []))
        report.broken_images = list(probe.get("broken_images", []))
        height = max(900, min(int(probe.get("height", 900)), 16_000))
        pipe.send("Emulation.setDeviceMetricsOverride",
                  {"width": width_px, "height": height, "deviceScaleFactor": 1, "mobile": False},
                  session=session)  # fmt: skip
        shot = pipe.send("Page.captureScreenshot", {"format": "png"}, session=session)
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        screenshot.write_bytes(base64.b64decode(shot["data"]))
        report.screenshot = screenshot
        try:
            pipe.send("Browser.close", timeout_s=5)
        except (RuntimeError, TimeoutError):
            pass
    finally:
        pipe.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(profile, ignore_errors=True)
    for ev in pipe.events:
        method, params = ev.get("method"), ev.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params["args"])
            report.console_errors.append(f"console.{params['type']}: {text}")
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            desc = details.get("exception", {}).get("description") or details.get("text")
            report.console_errors.append(f"uncaught: {desc}")
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            report.console_errors.append(f"log ({entry.get('source')}): {entry.get('text')}")
        elif method == "Network.loadingFailed":
            report.console_errors.append(f"load failed: {params.get('errorText')}")
        elif method == "Network.requestWillBeSent":
            req_url = params.get("request", {}).get("url", "")
            if req_url != url and not req_url.startswith(("data:", "about:")):
                report.requests.append(req_url)
    return report
