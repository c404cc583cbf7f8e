// @xmpp/client in node over WebSocket against a test server.
//
//   node xmpp_client.mjs SPEC_JSON
//
// SPEC: {service, domain, username, password, resource, expect?, timeout?}. For wss the test CA is
// trusted through NODE_EXTRA_CA_CERTS (set by the caller). Same protocol as strophe.mjs: JSON lines
// {"event":"online"}, then {"event":"result","result":{...}}; on failure {"event":"error"} and exit 1.
// Logs in, fetches the roster, sends presence, answers chat messages with "echo: <body>".

import { client, xml } from "@xmpp/client";
import { WebSocket } from "ws";

// Node 20 has no global WebSocket (22 has); @xmpp/websocket uses the global one.
globalThis.WebSocket ??= WebSocket;

const spec = JSON.parse(process.argv[2]);
const emit = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
const result = { online: false, jid: null, roster: null, received: [], error: null };

const xmpp = client({
  service: spec.service,
  domain: spec.domain,
  resource: spec.resource,
  username: spec.username,
  password: spec.password,
});
xmpp.reconnect.stop();

let finish;
const done = new Promise((resolve) => { finish = resolve; });
const checkDone = () => { if (result.roster && result.received.length >= (spec.expect || 0)) finish(); };

xmpp.on("error", (err) => {
  result.error = String(err && (err.condition || err.message) || err);
  finish();
});

xmpp.on("stanza", async (stanza) => {
  if (stanza.is("message") && stanza.getChild("body")) {
    const body = stanza.getChildText("body");
    result.received.push({ from: stanza.attrs.from, body, to: stanza.attrs.to });
    await xmpp.send(xml("message", { to: stanza.attrs.from, type: "chat" }, xml("body", {}, "echo: " + body)));
    checkDone();
  }
});

xmpp.on("online", async (address) => {
  result.online = true;
  result.jid = address.toString();
  try {
    const roster = await xmpp.iqCaller.get(xml("query", "jabber:iq:roster"));
    result.roster = { type: "result", items: roster.getChildren("item").length };
  } catch (err) {
    // An error answer still proves the IQ round trip; the Python test decides what it expects.
    result.roster = { type: "error", condition: String(err.condition || err.message) };
  }
  await xmpp.send(xml("presence"));
  emit({ event: "online", jid: result.jid });
  checkDone();
});

const timer = setTimeout(() => { result.error = result.error || "timeout"; finish(); }, spec.timeout || 20000);

try {
  await xmpp.start();
} catch (err) {
  result.error = result.error || String(err && (err.condition || err.message) || err);
  finish();
}
await done;
clearTimeout(timer);
try {
  await Promise.race([xmpp.stop(), new Promise((resolve) => setTimeout(resolve, 3000))]);
} catch {
  // already closed
}
emit({ event: "result", result });
process.exit(0);
