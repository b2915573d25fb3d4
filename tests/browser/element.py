"""Element Web in a real browser, for the browser test and the README screenshots.

``../shared/element-web`` (beside the repository) holds a built Element Web and ``serve.py``,
which serves it on loopback pointed at one homeserver. ``customer.mjs`` (beside this file)
drives it with Playwright (npm ``playwright-core``, installed here by ``.ci/setup.sh``) in
Debian's Chromium. This module starts the server and runs that script, reading the
``STEP <name>`` lines it prints so the Python side can act (as the agent) at the right moment.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
ELEMENT_DIR = ROOT.parent / "shared" / "element-web"
SCRIPT = HERE / "customer.mjs"
CHROMIUM = Path("/usr/bin/chromium")
# The window widths customer.mjs measures the !attachments table at (its FIT_WIDTHS).
FIT_WIDTHS = (1024, 1200, 1440, 390)


def missing() -> list[str]:
    """What the browser run needs and this machine lacks (empty when all is there)."""
    problems = []
    if not (ELEMENT_DIR / "serve.py").exists():
        problems.append(f"{ELEMENT_DIR} (Element Web bundle)")
    if shutil.which("node") is None:
        problems.append("node")
    if not CHROMIUM.exists():
        problems.append(f"{CHROMIUM} (apt-get install chromium)")
    if not (HERE / "node_modules" / "playwright-core").exists():
        problems.append("tests/browser/node_modules/playwright-core (npm install)")
    if shutil.which("zstd") is None:
        problems.append("zstd")
    return problems


@contextlib.asynccontextmanager
async def element_web(homeserver_url: str, server_name: str, cache: Path) -> AsyncIterator[str]:
    """Serve Element Web on loopback for ``homeserver_url``; yields its URL."""
    process = await asyncio.create_subprocess_exec(
        "python3", str(ELEMENT_DIR / "serve.py"), "--homeserver", homeserver_url,
        "--server-name", server_name, "--dir", str(cache),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    try:
        assert process.stdout is not None
        # The first start unpacks the bundle (a few seconds); the URL line follows.
        line = await asyncio.wait_for(process.stdout.readline(), timeout=120)
        match = re.search(rb"(http://127\.0\.0\.1:\d+)", line)
        if match is None:
            raise RuntimeError(f"serve.py did not print its URL: {line!r}")
        yield match.group(1).decode()
    finally:
        if process.returncode is None:
            process.terminate()
            await process.wait()


class Customer:
    """The ``customer.mjs`` browser session, read line by line."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []

    @classmethod
    async def start(cls, element_url: str, user: str, password: str, bot_id: str, *,
                    shots: Path | None = None, upload: Path | None = None,
                    fail_shot: Path | None = None) -> Customer:
        """Launch the browser session for ``user``."""
        env = {**os.environ, "ELEMENT_URL": element_url, "USER": user, "PASSWORD": password,
               "BOT_ID": bot_id, "CHROMIUM": str(CHROMIUM)}
        if shots is not None:
            env["SHOTS"] = str(shots)
        if upload is not None:
            env["UPLOAD"] = str(upload)
        if fail_shot is not None:
            env["FAIL_SHOT"] = str(fail_shot)
        process = await asyncio.create_subprocess_exec(
            "node", str(SCRIPT), cwd=HERE, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        return cls(process)

    async def until_step(self, name: str, timeout: float = 90.0) -> None:
        """Wait until the browser reports ``STEP name``; fail with its output otherwise."""
        assert self.process.stdout is not None

        async def read() -> None:
            while True:
                raw = await self.process.stdout.readline()  # type: ignore[union-attr]
                if not raw:
                    raise AssertionError(f"the browser session ended before {name}:\n"
                                         + "".join(self.lines))
                line = raw.decode(errors="replace")
                self.lines.append(line)
                if line.strip() == f"STEP {name}":
                    return
                if line.startswith("FAIL "):
                    raise AssertionError(f"the browser session failed before {name}:\n"
                                         + "".join(self.lines))

        try:
            await asyncio.wait_for(read(), timeout)
        except TimeoutError:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for the browser "
                                 f"to reach {name}:\n" + "".join(self.lines)) from None

    async def finish(self, timeout: float = 60.0) -> int:
        """Wait for the script to exit; returns its exit code."""
        await self.until_step("done", timeout)
        return await asyncio.wait_for(self.process.wait(), timeout)

    async def close(self) -> None:
        """Stop the browser session if it is still running (SIGTERM first: it saves a
        screenshot of where it was to ``fail_shot``)."""
        failed = any(line.startswith("FAIL ") for line in self.lines)
        if self.process.returncode is None and failed:
            # It is saving its own failure screenshot and closing the browser.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.process.wait(), 15)
        if self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
