// Strophe.js in headless Chromium against a test server, over WebSocket or BOSH.
//
//   node strophe.mjs SPEC_JSON
//
// SPEC: {service, jid, password, peer?, expect?, timeout?, chromium?, spki?: [base64 SHA-256 of an SPKI],
// hostRules?: Chromium --host-resolver-rules, e.g. "MAP example2.com 127.0.0.1" (a vhost name in the URL, so
// Chromium sends it as SNI and checks the certificate against it)}.
// The page is served by a tiny static server on another port, so the XMPP endpoint is cross-origin
// (the browser sends Origin; BOSH needs CORS). Prints JSON lines on stdout: {"event":"online",...} once
// the session is bound and the roster fetched, then {"event":"result","result":{...}} (or
// {"event":"error","error":"..."} and exit code 1).
//
// In the page: log in, fetch the roster, send presence, then answer every chat message from `peer`
// with "echo: <body>" until `expect` messages arrived. For BOSH, the attributes of the session-creation
// response are reported (`bosh.host` is the node name unless bosh/send-node-hostname is false).
//
// wss with the test CA: Chromium is given --ignore-certificate-errors-spki-list with the hash of the
// server's public key (only that key is trusted, unlike a blanket ignoreHTTPSErrors).
//
// result.protocols: the protocol of every https response (DevTools' Network.Response.protocol, e.g. "http/1.1",
// "h2"), so a test can see what Chromium (which offers ALPN h2 and http/1.1) ended up speaking.

import { readFileSync } from "node:fs";
import { createServer } from "node:http";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
const spec = JSON.parse(process.argv[2]);
const emit = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");

const FLAGS = [
  "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
];

function startStatic() {
  const strophe = readFileSync(join(here, "node_modules/strophe.js/dist/strophe.umd.min.js"));
  const page = "<!doctype html><html><head><meta charset='utf-8'><title>xmppcluster interop</title>" +
    "<script src='/strophe.js'></script></head><body>interop</body></html>";
  const server = createServer((req, res) => {
    if (req.url === "/") {
      res.writeHead(200, { "content-type": "text/html; charset=utf-8" }).end(page);
    } else if (req.url === "/strophe.js") {
      res.writeHead(200, { "content-type": "text/javascript" }).end(strophe);
    } else {
      res.writeHead(404).end();
    }
  });
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve(server)));
}

// Runs inside the page.
async function scenario(spec) {
  // The UMD bundle publishes Strophe, $iq, $msg and $pres as globals.
  const { Strophe, $iq, $msg, $pres } = window;
  const result = { connected: false, statuses: [], received: [], roster: null, bosh: null, jid: null };
  const conn = new Strophe.Connection(spec.service, {});
  const name = (code) => Object.keys(Strophe.Status).find((k) => Strophe.Status[k] === code) || String(code);
  conn.xmlInput = (elem) => {
    if (result.bosh === null && elem.nodeName === "body") {
      result.bosh = Object.fromEntries([...elem.attributes].map((a) => [a.name, a.value]));
    }
  };
  let finish, disconnected;
  const done = new Promise((resolve) => { finish = resolve; });
  const gone = new Promise((resolve) => { disconnected = resolve; });
  const timer = setTimeout(() => { result.error = "timeout"; finish(); }, spec.timeout || 20000);
  const checkDone = () => { if (result.received.length >= (spec.expect || 0) && result.roster) finish(); };

  conn.addHandler((msg) => {
    const body = msg.getElementsByTagName("body")[0];
    if (body) {
      const from = msg.getAttribute("from");
      result.received.push({ from, body: body.textContent, to: msg.getAttribute("to") });
      conn.send($msg({ to: from, type: "chat" }).c("body").t("echo: " + body.textContent));
      checkDone();
    }
    return true;
  }, null, "message");

  conn.connect(spec.jid, spec.password, (status, condition) => {
    result.statuses.push(name(status) + (condition ? ":" + condition : ""));
    if (status === Strophe.Status.DISCONNECTED) {
      disconnected();
      finish();
    } else if (status === Strophe.Status.CONNECTED) {
      result.connected = true;
      result.jid = conn.jid;
      conn.sendIQ($iq({ type: "get" }).c("query", { xmlns: "jabber:iq:roster" }),
        (iq) => {
          result.roster = { type: iq.getAttribute("type"), items: iq.getElementsByTagName("item").length };
          conn.send($pres());
          window.reportOnline({ jid: conn.jid });
          checkDone();
        },
        (iq) => {
          // An error answer still proves the IQ round trip; the Python test decides what it expects.
          result.roster = { type: iq ? iq.getAttribute("type") : "timeout" };
          conn.send($pres());
          window.reportOnline({ jid: conn.jid });
          checkDone();
        },
        10000);
    } else if ([Strophe.Status.CONNFAIL, Strophe.Status.AUTHFAIL, Strophe.Status.ERROR].includes(status)) {
      result.error = name(status) + (condition ? ":" + condition : "");
      finish();
    }
  });
  await done;
  clearTimeout(timer);
  if (result.connected && !result.statuses.includes("DISCONNECTED")) {
    // Strophe's BOSH disconnect drops stanzas still queued: send them first, and give the echo time to arrive.
    conn.flush();
    await new Promise((resolve) => setTimeout(resolve, 500));
    conn.disconnect("done");
    await Promise.race([gone, new Promise((resolve) => setTimeout(resolve, 3000))]);
  }
  return result;
}

async function main() {
  const staticServer = await startStatic();
  const args = [...FLAGS];
  if (spec.spki && spec.spki.length) args.push("--ignore-certificate-errors-spki-list=" + spec.spki.join(","));
  if (spec.hostRules) args.push("--host-resolver-rules=" + spec.hostRules);
  const browser = await chromium.launch({ executablePath: spec.chromium || "/usr/bin/chromium", headless: true, args });
  try {
    const page = await browser.newPage();
    const consoleLines = [];
    page.on("console", (m) => consoleLines.push(m.text()));
    page.on("pageerror", (e) => consoleLines.push("pageerror: " + e.message));
    await page.exposeFunction("reportOnline", (info) => emit({ event: "online", ...info }));
    const protocols = [];
    const cdp = await page.context().newCDPSession(page);
    cdp.on("Network.responseReceived", ({ response }) => {
      if (response.url.startsWith("https:")) protocols.push(response.protocol);
    });
    await cdp.send("Network.enable");
    const origin = `http://localhost:${staticServer.address().port}`;
    await page.goto(origin + "/");
    const result = await page.evaluate(scenario, spec);
    result.origin = origin;
    result.protocols = protocols;
    result.console = consoleLines.slice(-20);
    emit({ event: "result", result });
  } finally {
    await browser.close();
    staticServer.close();
  }
}

main().catch((e) => {
  emit({ event: "error", error: String(e && e.stack || e) });
  process.exitCode = 1;
});
