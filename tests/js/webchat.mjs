// Drives the server's own web chat page (/chat, Converse.js) in headless Chromium, one command at a time.
//
//   node webchat.mjs SPEC_JSON      SPEC: {chromium?, spki?: [base64 SHA-256 of an SPKI], hostRules?}
//
// Reads JSON commands on stdin, one a line, each {"id", "cmd", ...}; answers each with one JSON line
// {"id", "ok": true, ...} or {"id", "error": "..."}. Lines without an id are events:
// {"event": "ready"} once Chromium runs, {"event": "csp", ...} for each Content-Security-Policy violation the
// page reports, {"event": "console", "text"} for the page's console errors.
//
// Commands: goto {url, waitFor?: a selector} | login {jid, password} (fills Converse's own login form and submits it) |
// waitConnected {node?, not?, timeout?} (the page script's state.connectedTo) | waitNext {node, timeout?} (not connected, the next
// attempt goes to that node) | openChat {name} (clicks the
// contact in the roster) | send {text} (types into the open chat and presses Enter) | waitText {text, timeout?}
// (a chat message with that text is shown) | rosterStatus {name} | screenshot {path} | eval {expr} | quit.
// The page is used as a person would (form, roster, text area); only state and eval read page variables.

import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

const spec = JSON.parse(process.argv[2] || "{}");
const emit = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");

const FLAGS = [
  "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
];

async function main() {
  const args = [...FLAGS];
  if (spec.spki && spec.spki.length) args.push("--ignore-certificate-errors-spki-list=" + spec.spki.join(","));
  if (spec.hostRules) args.push("--host-resolver-rules=" + spec.hostRules);
  const browser = await chromium.launch({ executablePath: spec.chromium || "/usr/bin/chromium", headless: true, args });
  const page = await browser.newPage({ viewport: { width: 1200, height: 800 } });
  await page.exposeFunction("reportCsp", (v) => emit({ event: "csp", ...v }));
  await page.addInitScript(() => {
    document.addEventListener("securitypolicyviolation", (e) => window.reportCsp({
      directive: e.violatedDirective, blocked: e.blockedURI, source: e.sourceFile, line: e.lineNumber,
      sample: e.sample,
    }));
  });
  page.on("console", (m) => { if (m.type() === "error") emit({ event: "console", text: m.text() }); });
  page.on("pageerror", (e) => emit({ event: "console", text: "pageerror: " + e.message }));
  page.on("response", (r) => { if (r.status() >= 400) emit({ event: "http", status: r.status(), url: r.url() }); });

  const waitState = (predicate, arg, timeout) => page.waitForFunction(predicate, arg, { timeout, polling: 100 });
  const chatBox = () => page.locator("converse-chats converse-chat").last();

  const commands = {
    async goto({ url, waitFor }) {
      const response = await page.goto(url);
      if (waitFor) await page.locator(waitFor).first().waitFor({ timeout: 20000 });
      return { status: response.status(), headers: response.headers() };
    },
    async login({ jid, password }) {
      await page.locator("#converse-login-jid").fill(jid);
      await page.locator("#converse-login-password").fill(password);
      await page.locator("converse-login-form [type=submit]").click();
      return {};
    },
    async waitConnected({ node, not, timeout }) {
      await waitState(([node, not]) => {
        const s = window.xmppclusterWebchat;
        return s && s.connectedTo && (!node || s.connectedTo === node) && (!not || s.connectedTo !== not);
      }, [node || null, not || null], timeout || 20000);
      return { state: await page.evaluate(() => ({ ...window.xmppclusterWebchat, nodes: undefined })) };
    },
    async waitNext({ node, timeout }) {
      await waitState((node) => {
        const s = window.xmppclusterWebchat;
        return s && s.current && s.current.name === node && !s.connectedTo;
      }, node, timeout || 20000);
      return {};
    },
    async openChat({ name }) {
      await page.locator("converse-roster .list-item-link", { hasText: name }).first().click();
      await chatBox().locator("textarea.chat-textarea").waitFor({ timeout: 10000 });
      return {};
    },
    async send({ text }) {
      const area = chatBox().locator("textarea.chat-textarea");
      await area.fill(text);
      await area.press("Enter");
      return {};
    },
    async waitText({ text, timeout }) {
      await page.locator(".chat-msg__text", { hasText: text }).first().waitFor({ timeout: timeout || 20000 });
      return {};
    },
    async rosterStatus({ name }) {
      const item = page.locator("converse-roster li", { hasText: name }).first();
      await item.waitFor({ timeout: 10000 });
      return { html: await item.evaluate((el) => el.outerHTML) };
    },
    async screenshot({ path }) {
      await page.screenshot({ path, animations: "disabled" });
      return { path };
    },
    async eval({ expr }) {
      return { value: await page.evaluate(expr) };
    },
  };

  emit({ event: "ready" });
  const lines = createInterface({ input: process.stdin });
  for await (const line of lines) {
    if (!line.trim()) continue;
    const command = JSON.parse(line);
    if (command.cmd === "quit") break;
    try {
      const handler = commands[command.cmd];
      if (!handler) throw new Error("unknown command " + command.cmd);
      emit({ id: command.id, ok: true, ...(await handler(command)) });
    } catch (e) {
      emit({ id: command.id, error: String(e && e.message || e) });
    }
  }
  await browser.close();
}

main().catch((e) => {
  emit({ event: "fatal", error: String(e && e.stack || e) });
  process.exitCode = 1;
});
