// xmppcluster web chat: starts Converse.js on a live node chosen at random (served as /chat/app.js).
//
// config.json (from the node that served this page) lists the live nodes with their WebSocket and BOSH URLs.
// Before every login -- the user's, and each reconnect Converse makes by itself when a connection drops (the
// node was drained with a see-other-uri, or died) -- the "login" hook below picks the node: first the chosen
// one (at random, or ?node=NAME) for a fresh login; for a reconnect the node the see-other-uri named, then the
// others in random order. A node is used when it answers an HTTP request (a probe of its BOSH or WebSocket
// URL). Converse connects over WebSocket, and falls back to BOSH on the same node when WebSocket fails.
// The node list is read again every minute while the page is open.
// No inline script anywhere: the page's Content-Security-Policy allows scripts from this origin only.

"use strict";

(function () {
  const status = document.getElementById("xc-status");
  const say = (text) => { if (status) status.textContent = text; };
  const state = { nodes: [], current: null, connectedTo: null, moves: 0 };
  window.xmppclusterWebchat = state; // for people (and tests) looking at the page

  function params() {
    const domain = new URLSearchParams(window.location.search).get("domain");
    return domain ? "?domain=" + encodeURIComponent(domain) : "";
  }

  async function readConfig() {
    const answer = await fetch("config.json" + params(), { cache: "no-store", credentials: "omit" });
    if (!answer.ok) throw new Error("config.json: HTTP " + answer.status);
    return answer.json();
  }

  function usable(node) { return node.websocket.length > 0 || node.bosh.length > 0; }

  function pick(exclude) {
    const all = state.nodes.filter(usable);
    const others = all.filter((node) => !exclude || node.name !== exclude);
    const from = others.length ? others : all;
    return from.length ? from[Math.floor(Math.random() * from.length)] : null;
  }

  function urlOf(node, kind) {
    const list = node[kind] || [];
    return list.length ? list[0] : null;
  }

  function fromSeeOtherUri(uri) {
    // A see-other-uri names a node's endpoint: the node whose URL it is, if listed.
    return state.nodes.find((node) => node.websocket.includes(uri) || node.bosh.includes(uri)) || null;
  }

  async function refresh() {
    try {
      const config = await readConfig();
      if (config.nodes && config.nodes.length) state.nodes = config.nodes;
    } catch (e) {
      // The node that served the page may be gone: keep the list we have.
    }
  }

  function httpTwin(url) {
    // An HTTP URL on the same listener: a WebSocket URL's https:// (or http://) twin answers plain requests.
    return url.replace(/^wss:/, "https:").replace(/^ws:/, "http:");
  }

  async function alive(node) {
    // Any HTTP answer means the node is up; a refused or timed-out connection means it is not. no-cors: the
    // answer is not read, only whether one came.
    const url = urlOf(node, "bosh") || httpTwin(urlOf(node, "websocket"));
    const abort = new AbortController();
    const timer = window.setTimeout(() => abort.abort(), 4000);
    try {
      await fetch(url, { mode: "no-cors", cache: "no-store", credentials: "omit", signal: abort.signal });
      return true;
    } catch (e) {
      return false;
    } finally {
      window.clearTimeout(timer);
    }
  }

  function candidates(connection) {
    // A fresh login tries the chosen node first. A reconnect tries the node a see-other-uri named (Strophe put
    // it in connection.service), then the other nodes in random order, and the node it lost last.
    const all = state.nodes.filter(usable);
    const shuffled = all.map((node) => [Math.random(), node]).sort((a, b) => a[0] - b[0]).map((pair) => pair[1]);
    const current = state.current;
    if (!connection || !connection.reconnecting) {
      return current ? [current, ...shuffled.filter((node) => node !== current)] : shuffled;
    }
    const named = connection.service ? fromSeeOtherUri(connection.service) : null;
    const first = named && named !== current ? [named] : [];
    const others = shuffled.filter((node) => node !== current && !first.includes(node));
    return [...first, ...others, ...(current ? [current] : [])];
  }

  function use(api, connection, node) {
    const ws = urlOf(node, "websocket");
    const bosh = urlOf(node, "bosh");
    api.settings.set("websocket_url", ws || undefined);
    api.settings.set("bosh_service_url", bosh || undefined);
    if (connection && connection.reconnecting) {
      // Converse keeps the URL of a connection it re-establishes: change it too, for the transport in use.
      connection.service = (api.connection.isType("websocket") ? ws : bosh) || ws || bosh;
    }
    if (node !== state.current) state.moves += 1;
    state.current = node;
  }

  function plugin(settings) {
    return {
      initialize() {
        const { api } = this._converse;
        // Before every login, the user's and each automatic reconnect: pick a node that answers.
        api.listen.on("login", async (context, payload) => {
          const connection = api.connection.get();
          state.connectedTo = null;
          for (const node of candidates(connection)) {
            say(settings.title + ": trying " + node.name);
            if (await alive(node)) {
              use(api, connection, node);
              say(settings.title + ": connecting to " + node.name);
              return payload;
            }
          }
          say(settings.title + ": no node answers; trying " + (state.current ? state.current.name : "none"));
          return payload;
        });
        const connected = () => {
          const connection = api.connection.get();
          const node = (connection && fromSeeOtherUri(connection.service)) || state.current;
          state.current = node;
          state.connectedTo = node.name;
          say(settings.title + ": connected to " + node.name);
        };
        api.listen.on("connected", connected);
        api.listen.on("reconnected", connected);
        api.listen.on("will-reconnect", () => { state.connectedTo = null; });
        api.listen.on("disconnected", () => {
          state.connectedTo = null;
          say(settings.title + ": disconnected");
        });
      },
    };
  }

  async function start() {
    let config;
    try {
      config = await readConfig();
    } catch (e) {
      say("The web chat could not read its configuration (" + e.message + ").");
      return;
    }
    state.nodes = config.nodes || [];
    // ?node=NAME pins the first node (support, tests); otherwise one at random.
    const wanted = new URLSearchParams(window.location.search).get("node");
    state.current = state.nodes.find((node) => node.name === wanted && usable(node)) || pick(null);
    if (!state.current) {
      say(config.title + ": no node offers a WebSocket or BOSH endpoint this page may use.");
      return;
    }
    document.title = config.title;
    say(config.title + ": node " + state.current.name);
    // Converse's full-page footer shows its sponsors' logos from their web site: this page loads nothing
    // from elsewhere (its CSP would block them anyway), so the footer is an empty element defined first.
    if (!window.customElements.get("converse-footer")) {
      window.customElements.define("converse-footer", class extends HTMLElement {});
    }
    window.converse.plugins.add("xmppcluster-nodes", plugin(config));
    const websocketUrl = urlOf(state.current, "websocket");
    const boshUrl = urlOf(state.current, "bosh");
    window.converse.initialize({
      assets_path: new URL("dist/", window.location.href).href.replace(/\/$/, ""),
      authentication: "login",
      auto_login: false,
      auto_reconnect: true,
      allow_non_roster_messaging: true,
      allow_registration: false,
      blacklisted_plugins: ["converse-omemo", "converse-omemo-views", "converse-push"],
      bosh_service_url: boshUrl || undefined,
      websocket_url: websocketUrl || undefined,
      connection_options: { worker: false },
      default_domain: config.domain,
      discover_connection_methods: false,
      i18n: "en",
      loglevel: "warn",
      play_sounds: false,
      show_connection_url_input: false,
      show_self_in_roster: false,
      theme: "classic",
      view_mode: "fullscreen",
      whitelisted_plugins: ["xmppcluster-nodes"],
    });
    window.setInterval(refresh, 60000);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
