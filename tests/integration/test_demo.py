"""``parcel-bot demo`` end to end: its own Synapse, the bot, the scripted chat, clean exit."""

from __future__ import annotations

import os
import socket
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
    # The card as it first appeared (the question), then what it was edited to; the bot's
    # own reactions are gone, Alice's ✅ stays.
    assert f"Parcel  📥 Accept {IMAGE_NAME} from Carol?" in alice, report
    assert f"✏️ edited to: ✅ {IMAGE_NAME} from Carol (offer #1) — accepted by Alice" in alice
    assert "[✅ Alice]" in alice, report
    # The waiting status line, a reply to Carol's upload, then edited to received.
    assert f"⬆️ {IMAGE_NAME} · PNG image" in carol and "waiting for the agent" in carol, report
    assert f"↳ (reply to [image {IMAGE_NAME}" in carol, report
    assert f"✏️ edited to: 📎 {IMAGE_NAME} — received by the agent" in carol, report
    # The PDF: declined with ❌ by Carol and never delivered to her.
    assert f"Parcel  📥 Accept {PDF_NAME} from Alice (support)?" in carol, report
    assert f"🚫 {PDF_NAME} from Alice (support) (offer #2) — declined by Carol" in carol, report
    assert "[❌ Carol]" in carol, report
    assert f"[file {PDF_NAME}" not in carol, report
    assert f"🚫 {PDF_NAME} — declined by the customer" in alice, report
    assert "could not decrypt" not in output, report
    # The attachment log and the admin export.
    log = _section(output, "Attachment log")
    assert f"#1 sent: {IMAGE_NAME}" in log and "accepted" in log, report
    assert f"#2 received: {PDF_NAME}" in log and "declined" in log, report
    assert f",{IMAGE_NAME},image/png," in output and ",accepted," in output, report
    assert f",{PDF_NAME},application/pdf," in output and ",declined," in output, report
    # Everything was removed: no demo directory is left behind.
    assert not list(tmp_path.glob("parcel-demo-*")), report


@pytest.mark.integration
def test_demo_keep_on_a_fixed_port_prints_how_to_sign_in(tmp_path: Path) -> None:
    """`demo --keep --port N` serves the homeserver on port N, prints the logins and how to
    look with the local Element Web, and stops cleanly on SIGTERM."""
    from bot.devserver import free_port

    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "bot", "demo", "--keep", "--port", str(port)],
        cwd=ROOT, env={**os.environ, "TMPDIR": str(tmp_path)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8",
    )
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "Attachment log any time" in line:
                break
        output = "".join(lines)
        assert f"Still running (Ctrl-C to stop and clean up). Homeserver: http://127.0.0.1:{port}" \
            in output, output
        assert f"serve.py --homeserver http://127.0.0.1:{port}" in output, output
        assert "Carol (customer): @carol" in output and "password: " in output, output
        # The hint names a command this shell can run (not a bare parcel-bot off PATH).
        hint = next(line for line in lines if "Attachment log any time:" in line)
        command = hint.split("Attachment log any time: ", 1)[1].split(" log --config ")[0]
        ran = subprocess.run(f"{command} --version", shell=True, cwd=ROOT, capture_output=True,
                             text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
        assert ran.returncode == 0 and ran.stdout.startswith("parcel-bot "), (hint, ran.stderr)
    finally:
        process.terminate()
        process.wait(timeout=60)
    assert process.returncode == 0, "".join(lines)
    assert not list(tmp_path.glob("parcel-demo-*"))


@pytest.mark.integration
def test_demo_on_a_port_in_use_says_so_and_quotes_the_homeservers_log(tmp_path: Path) -> None:
    """`demo --keep --port N` with N taken: exit 1, the cause in the first line, then the end of
    Synapse's output (its folder is removed, so the message is the only copy)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "bot", "demo", "--keep", "--port", str(port)],
            cwd=ROOT, env={**os.environ, "TMPDIR": str(tmp_path)},
            capture_output=True, text=True, encoding="utf-8", timeout=120,
        )
    lines = result.stderr.splitlines()
    assert result.returncode == 1, result.stderr
    assert lines[0] == (f"parcel-bot demo: Synapse could not start: port {port} is in use "
                        "(exit code 1); the end of its output:"), result.stderr
    assert lines[1].startswith("  --- ") and lines[1].endswith("synapse-output.log ---")
    assert any("Address already in use" in line or f"port ({port})" in line
               for line in lines[2:]), result.stderr
    assert 3 <= len(lines) <= 2 + 2 * 13, result.stderr  # the end, not the whole log
    assert "Traceback (most recent call last)" not in lines[0]
    assert not list(tmp_path.glob("parcel-demo-*"))
