// @xmpp/client in node against a test server: over WebSocket (ws://, wss://) or TCP (xmpp:// with STARTTLS,
// xmpps:// direct TLS, XEP-0368).
//
//   node xmpp_client.mjs SPEC_JSON
//
// SPEC: {service, domain, username, password, resource, expect?, timeout?, alpn?, servername?}. For TLS the
// test CA is trusted through NODE_EXTRA_CA_CERTS (set by the caller). Same protocol as strophe.mjs: JSON lines
// {"event":"online"}, then {"event":"result","result":{...}}; on failure {"event":"error"} and exit 1.
// Logs in, fetches the roster, sends presence, answers chat messages with "echo: <body>".
//
// TCP: every TLS handshake (the direct one, or the STARTTLS upgrade) is reported in result.tls as
// {alpn, version, servername}. @xmpp/tls offers no ALPN of its own: `alpn` (e.g. ["xmpp-client"]) is added to
// its tls.connect options, as is `servername` (SNI and the name the certificate is checked against) for a
// service URL that names an address rather than the domain.

import { client, xml } from "@xmpp/client";
import TLSSocket from "@xmpp/tls/lib/Socket.js";
import { WebSocket } from "ws";

// Node 20 has no global WebSocket (22 has); @xmpp/websocket uses the global one.
globalThis.WebSocket ??= WebSocket;

const spec = JSON.parse(process.argv[2]);
const emit = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
const result = { online: false, jid: null, roster: null, received: [], error: null, tls: [] };

// Used by @xmpp/tls (xmpps://) and by @xmpp/starttls for the upgrade (xmpp://).
const tlsConnect = TLSSocket.prototype.connect;
TLSSocket.prototype.connect = function (options, ...rest) {
  const extra = {};
  if (spec.alpn) extra.ALPNProtocols = spec.alpn;
  if (spec.servername) extra.servername = spec.servername;
  tlsConnect.call(this, { ...options, ...extra }, ...rest);
  const socket = this.socket;
  socket.once("secureConnect", () => {
    result.tls.push({ alpn: socket.alpnProtocol || null, version: socket.getProtocol(),
                      servername: socket.servername || null });
  });
};

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
