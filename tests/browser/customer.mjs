// A customer in Element Web, driven by Playwright in Debian's Chromium.
//
// Logs in, starts a chat with the bot (Element's "Start chat", then a first message, which is
// when Element creates the DM), waits for an agent's image offer, clicks its ✅ pill, and waits
// until the image shows in-line and the activity panel says 📎. With SHOTS set it also uploads
// UPLOAD (a file the customer sends, for the "waiting" status line) and saves the README
// screenshots into SHOTS.
//
// Settings come from the environment: ELEMENT_URL, USER, PASSWORD, BOT_ID, [SHOTS, UPLOAD].
// Progress goes to stdout as "STEP <name>" lines, which the Python side waits for; anything
// that goes wrong ends the process non-zero with "FAIL <what>" and a screenshot beside it.

import { chromium } from "playwright-core";

const env = process.env;
const STEP_TIMEOUT = 45_000;
const shots = env.SHOTS || "";
const failShot = env.FAIL_SHOT || "";
// Element Web on a laptop and desktop screens, and a phone-width window.
const FIT_WIDTHS = [1024, 1200, 1440, 390];
// Hides Element Web's space bar and room list (the phone-wide measurement shows the room alone).
const PHONE_CSS = ".mx_LeftPanel_outerWrapper, .mx_ResizeHandle { display: none !important; }";

function step(name) {
  console.log(`STEP ${name}`);
}

// Only loopback, data: and blob: may be fetched: nothing leaves this machine.
const LOCAL = /^(https?:\/\/(127\.0\.0\.1|localhost)(:\d+)?\/|data:|blob:)/;

const browser = await chromium.launch({
  executablePath: env.CHROMIUM || "/usr/bin/chromium",
  args: [
    "--proxy-server=http://127.0.0.1:9",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
  ],
});
const page = await browser.newPage({ viewport: { width: 1200, height: 860 } });
page.setDefaultTimeout(STEP_TIMEOUT);
await page.route("**/*", (route) =>
  LOCAL.test(route.request().url()) ? route.continue() : route.abort(),
);

async function dismissPrompts() {
  // First-login prompts and toasts: "Set up Secure Backup", verification banners, tips.
  for (const name of ["Later", "Dismiss", "OK", "Not now", "Skip"]) {
    const buttons = page.getByRole("button", { name, exact: true });
    const count = await buttons.count();
    for (let i = 0; i < count; i++) {
      const button = buttons.nth(i);
      if (await button.isVisible().catch(() => false)) {
        await button.click({ timeout: 2000 }).catch(() => {});
      }
    }
  }
}

async function shot(name) {
  if (!shots) return;
  await dismissPrompts();
  await page.mouse.move(1, 1); // no hover highlight or tooltip in the picture
  await page.waitForTimeout(400); // let animations settle before the picture
  await page.screenshot({ path: `${shots}/${name}.png` });
}

function tileWith(text) {
  return page.locator("li.mx_EventTile", { hasText: text }).last();
}

async function main() {
  await page.goto(`${env.ELEMENT_URL}/#/login`);
  await page.getByLabel("Username").fill(env.USER);
  await page.getByLabel("Password").fill(env.PASSWORD);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("tree", { name: "Rooms" }).or(page.locator(".mx_RoomList")).first()
    .waitFor();
  await page.waitForTimeout(1500);
  await dismissPrompts();
  step("logged-in");

  // Start chat → the bot's id → its tile → Go; then a first message creates the DM.
  const start = page.getByRole("button", { name: "Start chat" });
  if (await start.count()) {
    await start.first().click();
  } else {
    await page.getByRole("button", { name: "Send a Direct Message" }).click();
  }
  const dialog = page.getByRole("dialog");
  await dialog.getByRole("button", { name: "Go" }).waitFor();
  await page.keyboard.type(env.BOT_ID); // the dialog focuses its search field
  await dialog.getByText(env.BOT_ID, { exact: true }).first().click();
  await dialog.getByRole("button", { name: "Go" }).click();
  const composer = page.locator(".mx_BasicMessageComposer_input").first();
  await composer.click();
  await composer.pressSequentially("Hello, my router is blinking red.");
  await composer.press("Enter");
  await tileWith("connected to our support team").waitFor({ timeout: 60_000 });
  await dismissPrompts();
  step("chat-open");

  if (shots && env.UPLOAD) {
    // The customer sends a photo: the bot's ⬆️ status line appears as a reply to it.
    const chooser = page.waitForEvent("filechooser");
    const attach = page.getByRole("button", { name: "Attachment" });
    if (await attach.count()) {
      await attach.first().click();
    } else {
      await page.getByRole("button", { name: "More options" }).click();
      await page.getByRole("menuitem", { name: "Attachment" }).click();
    }
    await (await chooser).setFiles(env.UPLOAD);
    await page.getByRole("button", { name: "Upload" }).click();
    await tileWith("waiting for the agent to accept").waitFor();
    await shot("1-waiting-status");
    step("uploaded");
    await tileWith("received by the agent").waitFor();
    step("upload-accepted");
  }

  // The agent's image arrives as an offer card that asks first; ✅ is a pill to click.
  const card = tileWith("📥 Accept");
  await card.waitFor();
  const accept = card.locator(".mx_ReactionsRowButton", { hasText: "✅" });
  await accept.waitFor();
  await shot("2-offer-card");
  step("offer-shown");
  await accept.click();

  // The image arrives in-line (decrypted into a blob: URL) and the panel says 📎.
  const image = page.locator(".mx_MImageBody img[src^='blob:']").last();
  await image.waitFor();
  await page.waitForFunction((img) => img.complete && img.naturalWidth > 0,
    await image.elementHandle());
  await tileWith("accepted by").waitFor();
  // The panel is edited a moment later (edits are coalesced): nothing left waiting.
  await page.locator("li.mx_EventTile", { hasText: "Files in this chat" })
    .filter({ hasText: "📎 #" }).filter({ hasNotText: "waiting" }).first().waitFor();
  await shot("3-image-delivered");
  step("image-shown");

  // !attachments answers with a table: it must fit the timeline at the widths people use
  // (Element Web on a laptop or desktop, and a phone-width window), not run off the edge.
  await composer.click();
  await composer.pressSequentially("!attachments");
  await composer.press("Enter");
  const log = tileWith("Attachments (").locator("table");
  await log.waitFor();
  let phoneStyle = null;
  for (const width of FIT_WIDTHS) {
    await page.setViewportSize({ width, height: 860 });
    if (width < 600) {
      // Element Web keeps its space bar and room list at any width, which leaves a phone-wide
      // window a timeline of a few dozen pixels; a phone shows the room alone, so do that.
      phoneStyle = await page.addStyleTag({ content: PHONE_CSS });
    }
    await page.waitForTimeout(500); // Element lays the timeline out again
    await log.scrollIntoViewIfNeeded();
    const fit = await log.evaluate((table) => {
      const body = table.closest(".mx_EventTile_body") || table.parentElement;
      return { table: table.scrollWidth, container: body.clientWidth };
    });
    console.log(`FIT ${width} ${fit.table} ${fit.container}`);
    // FIT_SHOTS: a picture of each width, to look at what was measured.
    if (env.FIT_SHOTS) await page.screenshot({ path: `${env.FIT_SHOTS}/attachments-${width}.png` });
    if (phoneStyle) {
      await phoneStyle.evaluate((style) => style.remove());
      phoneStyle = null;
    }
  }
  await page.setViewportSize({ width: 1200, height: 860 });
  step("table-measured");

  if (shots) {
    // The pinned activity panel: Element shows it in a banner at the top of the room.
    // Clicking it scrolls the timeline to the panel and highlights it.
    const banner = page.locator(".mx_PinnedMessageBanner");
    await banner.waitFor();
    await banner.click();
    await page.locator("li.mx_EventTile", { hasText: "Files in this chat" }).first()
      .waitFor({ state: "visible" });
    await page.waitForTimeout(1000); // the scroll animation
    await shot("4-pinned-panel");

    // The answer to !attachments (typed above, for the fit check), then !end (not in the
    // README).
    await tileWith("Attachments (2)").scrollIntoViewIfNeeded();
    await shot("5-attachments-command");
    await composer.click();
    await composer.pressSequentially("!end");
    await composer.press("Enter");
    await tileWith("You ended the chat").waitFor();
    await shot("6-chat-ended");
  }
  step("done");
}

// Stopped from outside (a wait on the Python side ran out): leave a picture of where it was.
process.on("SIGTERM", async () => {
  console.log("FAIL stopped from outside");
  if (failShot) await page.screenshot({ path: failShot }).catch(() => {});
  await browser.close().catch(() => {});
  process.exit(1);
});

try {
  await main();
} catch (error) {
  console.log(`FAIL ${String(error).split("\n")[0]}`);
  if (failShot) await page.screenshot({ path: failShot }).catch(() => {});
  await browser.close();
  process.exit(1);
}
await browser.close();
