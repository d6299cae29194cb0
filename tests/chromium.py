"""A headless Chromium driven over the DevTools protocol on a pipe: no network, no PyPI package.

`Chromium()` starts the browser with `--remote-debugging-pipe`: the protocol's JSON messages,
each ended by a NUL byte, go in on the browser's file descriptor 3 and come out on 4 (what
Puppeteer's `pipe: true` uses). Nothing is downloaded and no port is opened. `find_chromium()` is
the browser on PATH (Debian's `chromium` package, `apt-get install chromium`), or None.

    with Chromium() as browser:
        page = browser.open(Path("page.html"))
        page.evaluate("document.title")
        page.click(100, 200)
        page.errors          # console errors, uncaught exceptions, failed loads: [] on a clean page

Used by tests/test_learn_html.py and tools/figures/make_trace_page_figure.py.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_INSTALL = "apt-get install chromium"


def find_chromium() -> str | None:
    """The first of BROWSERS on PATH (CHROMIUM overrides), or None."""
    explicit = os.environ.get("CHROMIUM")
    if explicit:
        return shutil.which(explicit)
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


class ProtocolError(RuntimeError):
    """The browser answered a command with an error, closed the pipe, or did not answer in time."""


class Chromium:
    """One headless browser process, closed by `close()` or at the end of a `with` block."""

    def __init__(self, executable: str | None = None, *, width: int = 1400, height: int = 900,
                 timeout: float = 60.0):
        exe = executable or find_chromium()
        if exe is None:
            raise FileNotFoundError(f"no Chromium on PATH (tried {', '.join(BROWSERS)}): {CHROMIUM_INSTALL}")
        self.timeout = timeout
        self.width, self.height = width, height
        self._profile = tempfile.TemporaryDirectory(prefix="bert-ref-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # Move the browser's ends above 3 and 4 first, so that dup2 onto 3 and 4 cannot clobber them.
        high_r = os.dup2(to_browser_r, 10) if to_browser_r < 10 else to_browser_r
        high_w = os.dup2(from_browser_w, 11) if from_browser_w < 10 else from_browser_w

        def pipes_on_3_and_4() -> None:  # runs in the child, before exec
            os.dup2(high_r, 3)
            os.dup2(high_w, 4)

        flags = ["--headless", "--remote-debugging-pipe", f"--user-data-dir={self._profile.name}",
                 "--no-first-run", "--no-default-browser-check", "--disable-gpu", "--disable-extensions",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio", "--allow-file-access-from-files",
                 f"--window-size={width},{height}"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            flags.append("--no-sandbox")  # Chromium refuses to run as root with its sandbox
        self._proc = subprocess.Popen([exe, *flags, "about:blank"], stdin=subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      preexec_fn=pipes_on_3_and_4, pass_fds=(3, 4))
        for fd in {to_browser_r, from_browser_w, high_r, high_w}:
            os.close(fd)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []

    # -- the protocol ------------------------------------------------------------------------

    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            if time.monotonic() > deadline:
                raise ProtocolError(f"no answer from the browser in {self.timeout} s")
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                raise ProtocolError(f"the browser closed the pipe (exit status {self._proc.poll()})")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        """Send one command and return its result; events that arrive meanwhile go to `events`."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise ProtocolError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, session: str | None = None) -> dict:
        """The first event `method` (of `session`) not yet waited for, reading more when needed."""
        deadline = time.monotonic() + self.timeout
        while True:
            for i, event in enumerate(self.events):
                if event.get("method") == method and (session is None or event.get("sessionId") == session):
                    return self.events.pop(i)
            self.events.append(self._read_message(deadline))

    def open(self, path: Path) -> Page:
        """A new tab showing the local file `path`, loaded (its `load` event fired)."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, session)
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable", session=session)
        self.send("Emulation.setDeviceMetricsOverride", {"width": self.width, "height": self.height,
                                                         "deviceScaleFactor": 1, "mobile": False}, session)
        self.send("Page.navigate", {"url": Path(path).resolve().as_uri()}, session)
        self.wait_for("Page.loadEventFired", session)
        return page

    def close(self) -> None:
        if self._proc.poll() is None:
            try:
                self.send("Browser.close")
            except (ProtocolError, OSError):
                pass
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        for fd in (self._to_browser, self._from_browser):
            try:
                os.close(fd)
            except OSError:
                pass
        self._profile.cleanup()

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Page:
    """One tab: evaluate JavaScript, click, read the console's errors, take a screenshot."""

    def __init__(self, browser: Chromium, session: str):
        self.browser, self.session = browser, session

    def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression (a thrown error is a ProtocolError)."""
        result = self.browser.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                        "awaitPromise": True}, self.session)
        if "exceptionDetails" in result:
            raise ProtocolError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    def _mouse(self, kind: str, x: float, y: float) -> None:
        self.browser.send("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left",
                                                       "clickCount": 1}, self.session)

    def click(self, x: float, y: float) -> None:
        """A real left click at viewport coordinates (moved to, pressed, released)."""
        self._mouse("mouseMoved", x, y)
        self._mouse("mousePressed", x, y)
        self._mouse("mouseReleased", x, y)

    def press(self, key: str, code: str, key_code: int) -> None:
        """A real key press (keyDown and keyUp), e.g. press("ArrowRight", "ArrowRight", 39)."""
        for kind in ("rawKeyDown", "keyUp"):
            self.browser.send("Input.dispatchKeyEvent", {"type": kind, "key": key, "code": code,
                                                         "windowsVirtualKeyCode": key_code}, self.session)

    def click_element(self, selector: str) -> None:
        """Scroll the first element matching the CSS `selector` into view and click its centre."""
        box = self.evaluate(f"""(() => {{
            const e = document.querySelector({json.dumps(selector)});
            if (!e) return null;
            e.scrollIntoView({{block: "center"}});
            const r = e.getBoundingClientRect();
            return [r.left + r.width / 2, r.top + r.height / 2];
        }})()""")
        if box is None:
            raise ProtocolError(f"no element matches {selector!r}")
        self.click(*box)

    @property
    def errors(self) -> list[str]:
        """Console errors and warnings, uncaught exceptions and failed loads seen so far."""
        self.evaluate("0")  # a round trip: events logged before it are read by now
        found = []
        for event in self.browser.events:
            if event.get("sessionId") != self.session:
                continue
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                found.append(f"exception: {params['exceptionDetails']}")
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "warning", "assert"):
                found.append(f"console.{params['type']}: {[a.get('value') for a in params.get('args', [])]}")
            elif method == "Log.entryAdded" and params["entry"].get("level") in ("error", "warning"):
                found.append(f"log {params['entry'].get('level')}: {params['entry'].get('text')}")
        return found

    @property
    def requests(self) -> list[str]:
        """The URL of every request the page made so far (its own file:// URL included)."""
        self.evaluate("0")
        return [e["params"]["request"]["url"] for e in self.browser.events
                if e.get("sessionId") == self.session and e.get("method") == "Network.requestWillBeSent"]

    def screenshot(self, path: Path) -> Path:
        """The viewport as a PNG file."""
        data = self.browser.send("Page.captureScreenshot", {"format": "png"}, self.session)["data"]
        Path(path).write_bytes(base64.b64decode(data))
        return Path(path)
