"""Take the README's screenshots from a real run: Synapse, Parcel, and a customer in Element Web.

    bash .ci/setup.sh && .venv/bin/python docs/screenshots.py

Starts a throwaway Synapse on loopback, the bot (as "Acme Support", with a logo), Element Web
from ``../shared/element-web`` and a headless Chromium driven by ``tests/browser/customer.mjs``.
The customer sends a photo (the ⬆️ waiting status line), the agent accepts it, then offers an
image that the customer accepts with ✅ (the card, the image in-line, the pinned panel). The
pictures are written to ``docs/screenshots/`` as small palette PNGs. Nothing is drawn by hand.
"""

from __future__ import annotations

import asyncio
import io
import os
import sys
import tempfile
from pathlib import Path

from nio import AsyncClient, AsyncClientConfig
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bot.devserver import Homeserver, RegisteredUser  # noqa: E402
from tests.browser import element  # noqa: E402
from tests.chat import OFFER_KEY, BotRunner, Person, bot_config  # noqa: E402

OUT = ROOT / "docs" / "screenshots"
NAMES = ("1-waiting-status", "2-offer-card", "3-image-delivered", "4-pinned-panel",
         "5-attachments-command")


def router_photo() -> bytes:
    """A stand-in photo of a router's lights (the customer's upload)."""
    image = Image.new("RGB", (480, 300), "#2b2f36")
    draw = ImageDraw.Draw(image)
    draw.rounded_rectangle((40, 110, 440, 200), radius=18, fill="#d9dde3")
    for index, colour in enumerate(("#34c759", "#34c759", "#ff3b30", "#ffcc00", "#34c759")):
        x = 90 + index * 70
        draw.ellipse((x, 145, x + 22, 167), fill=colour)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def wiring_diagram() -> bytes:
    """The agent's image: how to plug the router in."""
    image = Image.new("RGB", (480, 300), "#f4f7fb")
    draw = ImageDraw.Draw(image)
    draw.rectangle((40, 120, 170, 190), outline="#0b5cad", width=5)
    draw.rectangle((310, 120, 440, 190), outline="#0b5cad", width=5)
    draw.line((170, 155, 310, 155), fill="#e07a00", width=8)
    draw.text((60, 200), "modem", fill="#0b5cad")
    draw.text((330, 200), "router WAN", fill="#0b5cad")
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def logo() -> bytes:
    """The bot's avatar (profile.avatar)."""
    image = Image.new("RGB", (128, 128), "#0b5cad")
    draw = ImageDraw.Draw(image)
    draw.ellipse((24, 24, 104, 104), fill="#ffffff")
    draw.ellipse((44, 44, 84, 84), fill="#e07a00")
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def shrink(path: Path) -> None:
    """Rewrite a screenshot as an optimised 256-colour PNG (a fraction of the size)."""
    with Image.open(path) as image:
        small = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    small.save(path, format="PNG", optimize=True)


async def take(work: Path) -> None:
    """One real run, saving the pictures into ``work``."""
    server = Homeserver(work / "synapse")
    await server.start()
    try:
        bot_user = await server.register("parcel", displayname="Parcel")
        agent_user = await server.register("alice", displayname="Alice")
        customer_user = await server.register("carol", displayname="Carol")
        (work / "agent-store").mkdir()
        (work / "logo.png").write_bytes(logo())
        (work / "router.png").write_bytes(router_photo())
        config = bot_config(server, bot_user, [agent_user.user_id], work / "bot",
                            agents={"room_encryption": True},
                            profile={"display_name": "Acme Support",
                                     "avatar": str(work / "logo.png")})
        agent = await _person(server, agent_user, work / "agent-store")
        bot = BotRunner(config)
        await bot.start()
        try:
            async with element.element_web(server.url, server.server_name,
                                           work / "element-web") as url:
                customer = await element.Customer.start(
                    url, customer_user.localpart, customer_user.password, bot_user.user_id,
                    shots=work, upload=work / "router.png",
                    fail_shot=Path(os.environ.get("PARCEL_BROWSER_FAIL_SHOT",
                                                  work / "failure.png")),
                )
                try:
                    await _act_as_agent(customer, agent)
                finally:
                    await customer.close()
        finally:
            await bot.stop()
            await agent.client.close()
    finally:
        await server.stop()


async def _person(server: Homeserver, user: RegisteredUser, store: Path) -> Person:
    """A logged-in, encrypted nio client for the agent (``store`` must exist)."""
    client = AsyncClient(server.url, user.user_id, device_id=user.device_id,
                         store_path=str(store),
                         config=AsyncClientConfig(encryption_enabled=True,
                                                  store_sync_tokens=False))
    client.restore_login(user.user_id, user.device_id, user.access_token)
    await client.sync(timeout=0, full_state=True)
    if client.should_upload_keys:
        await client.keys_upload()
    return Person(client, user)


async def _act_as_agent(customer: element.Customer, agent: Person) -> None:
    """The agent's side of the script, in step with the browser."""
    await customer.until_step("logged-in", timeout=120)
    room = await agent.accept_invite("the agent room invite", timeout=120)
    await customer.until_step("uploaded", timeout=120)
    await agent.until(lambda: agent.offers(room), "the customer's photo offered")
    card = agent.offers(room)[0]
    await agent.until(lambda: len(agent.reactions_on(room, card["event_id"])) == 2,
                      "the bot's ✅/❌")
    await agent.react(room, card["event_id"], "\u2705")
    await customer.until_step("upload-accepted", timeout=60)
    await agent.send_file(room, wiring_diagram(), "wiring.png", "image/png", "m.image",
                          encrypt=True)
    await agent.until(lambda: len(agent.offers(room)) == 2
                      and OFFER_KEY in agent.offers(room)[1]["content"], "the status line")
    code = await customer.finish(timeout=120)
    if code != 0:
        raise RuntimeError("the browser session failed:\n" + "".join(customer.lines))


def main() -> int:
    """Take the screenshots and copy them into docs/screenshots/."""
    problems = element.missing()
    if problems:
        print("screenshots.py needs: " + ", ".join(problems) + " (run bash .ci/setup.sh)",
              file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="parcel-shots-") as tmp:
        work = Path(tmp)
        try:
            asyncio.run(take(work))
        except (AssertionError, RuntimeError) as exc:
            print(f"screenshots.py: {exc}", file=sys.stderr)
            return 1
        OUT.mkdir(parents=True, exist_ok=True)
        for name in NAMES:
            target = OUT / f"{name}.png"
            target.write_bytes((work / f"{name}.png").read_bytes())
            shrink(target)
            print(f"{target.relative_to(ROOT)}: {target.stat().st_size // 1024} KB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
