"""``parcel-bot demo`` end to end: its own Synapse, the bot, the scripted chat, clean exit."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bot.demo import ALICE_ANSWER, CAROL_HELLO, IMAGE_NAME, PDF_NAME

ROOT = Path(__file__).resolve().parents[2]


def _section(output: str, title: str) -> str:
    """The lines of one section of the demo's report (up to the next blank line)."""
    start = output.index(title)
    end = output.find("\n\n", start)
    return output[start:] if end < 0 else output[start:end]


@pytest.mark.integration
def test_demo_plays_the_whole_script_and_cleans_up(tmp_path: Path) -> None:
    """Exit 0; each side saw the hello, the accepted image in-line and the declined PDF."""
    began = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "bot", "demo"],
        cwd=ROOT,
        env={**os.environ, "TMPDIR": str(tmp_path)},  # so leftovers would show up here
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=240,
    )
    took = time.monotonic() - began
    report = f"exit {result.returncode} after {took:.1f} s\n{result.stdout}\n{result.stderr}"
    assert result.returncode == 0, report
    assert result.stderr == "", report
    output = result.stdout

    carol = _section(output, "What Carol saw")
    alice = _section(output, "What Alice saw")
    # Hello, both ways, attributed.
    assert f"Carol   {CAROL_HELLO}" in carol, report
    assert f"Parcel  Carol: {CAROL_HELLO}" in alice, report
    assert f"Parcel  Alice (support): {ALICE_ANSWER}" in carol, report
    # The image: accepted with ✅ by Alice, delivered in-line to her, status edited for Carol.
    assert f"[image {IMAGE_NAME} 320×200, " in alice, report
    assert "✅ accepted" in alice and "✅ Parcel, Alice" in alice, report
    assert f"📎 {IMAGE_NAME} — received by the agent (edited)" in carol, report
    # The PDF: declined with ❌ by Carol and never delivered to her.
    assert f"{PDF_NAME} from Alice (support) (offer #2): 🚫 declined" in carol, report
    assert "❌ Parcel, Carol" in carol, report
    assert f"[file {PDF_NAME}" not in carol, report
    assert f"🚫 {PDF_NAME} — declined by the customer" in alice, report
    assert "could not decrypt" not in output, report
    # The attachment log and the admin export.
    log = _section(output, "Attachment log")
    assert f"#1 sent: {IMAGE_NAME}" in log and "received" in log, report
    assert f"#2 received: {PDF_NAME}" in log and "declined" in log, report
    assert f",{IMAGE_NAME},image/png," in output and ",accepted," in output, report
    assert f",{PDF_NAME},application/pdf," in output and ",declined," in output, report
    # Everything was removed: no demo directory is left behind.
    assert not list(tmp_path.glob("parcel-demo-*")), report
