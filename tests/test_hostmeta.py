"""XEP-0156 host-meta: XRD and JRD documents, the domain check, CORS, cluster membership, real listeners."""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from types import SimpleNamespace

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase
from twisted.web.test.requesthelper import DummyRequest

from tests.clients.tip1 import REL_BOSH, REL_WEBSOCKET, XRD_NS, Tip1Client, fetch_host_meta
from tests.support.server import start_server, test_ca
from xmppcluster.config import parse_text
from xmppcluster.ops.hostmeta import HostMetaResource, host_meta_links, live_nodes, well_known_resource

LAYOUT = """
--virt-hosts=example2.com,example3.com
--node-name=t1.example1.com
bosh/connections/ports[i]=5280,5281
bosh/connections/5281/socket=ssl
ws2s/connections/ports[i]=5290,5291
ws2s/connections/5291/socket=ssl
"""


def fake_server(text: str = LAYOUT, links: dict | None = None) -> SimpleNamespace:
    config = parse_text(text)
    cluster = None if links is None else SimpleNamespace(links=links)
    return SimpleNamespace(config=config, node_name=config.node_name, cluster=cluster,
                           is_local_domain=lambda d: d in config.virt_hosts)


def get(resource, *, host: str | None = "example2.com", domain: str | None = None, method: bytes = b"GET",
        postpath: list[bytes] | None = None) -> tuple[DummyRequest, bytes]:
    request = DummyRequest(postpath or [])
    request.method = method
    if host is not None:
        request.requestHeaders.setRawHeaders(b"host", [host.encode()])
    if domain is not None:
        request.args[b"domain"] = [domain.encode()]
    body = resource.render(request)
    return request, body


def header(request: DummyRequest, name: bytes) -> str | None:
    values = request.responseHeaders.getRawHeaders(name)
    return values[0].decode() if values else None


def xrd_links(body: bytes) -> list[tuple[str, str]]:
    root = ET.fromstring(body)
    assert root.tag == f"{{{XRD_NS}}}XRD", root.tag
    assert all(child.tag == f"{{{XRD_NS}}}Link" for child in root)
    return [(link.attrib["rel"], link.attrib["href"]) for link in root]


def jrd_links(body: bytes) -> list[tuple[str, str]]:
    document = json.loads(body)
    assert set(document) == {"links"}
    return [(link["rel"], link["href"]) for link in document["links"]]


class LinkTests(TestCase):
    def test_single_node_lists_only_tls_endpoints(self) -> None:
        links = host_meta_links(fake_server())
        self.assertEqual(sorted(links), [
            (REL_WEBSOCKET, "wss://t1.example1.com:5291/"),
            (REL_BOSH, "https://t1.example1.com:5281/http-bind"),
        ])

    def test_websocket_on_bosh_port_without_tls_ws2s(self) -> None:
        server = fake_server("--node-name=n.example\nbosh/connections/ports[i]=5281\n"
                             "bosh/connections/5281/socket=ssl\nws2s/connections/ports[i]=5290\n")
        self.assertEqual(sorted(host_meta_links(server)), [
            (REL_WEBSOCKET, "wss://n.example:5281/xmpp-websocket"),
            (REL_BOSH, "https://n.example:5281/http-bind"),
        ])

    def test_no_tls_http_listener_no_links(self) -> None:
        server = fake_server("--node-name=n.example\n")  # default layout: plain 5280 and 5290 only
        self.assertEqual(host_meta_links(server), [])

    def test_cluster_node_join_and_death(self) -> None:
        links: dict = {}
        server = fake_server(links=links)
        self.assertEqual(live_nodes(server), ["t1.example1.com"])
        links["t2.example1.com"] = object()  # link up: the node joined
        self.assertEqual(live_nodes(server), ["t1.example1.com", "t2.example1.com"])
        hrefs = sorted(href for rel, href in host_meta_links(server) if rel == REL_WEBSOCKET)
        self.assertEqual(hrefs, ["wss://t1.example1.com:5291/", "wss://t2.example1.com:5291/"])
        del links["t2.example1.com"]  # link lost: the node died
        self.assertNotIn("t2.example1.com", " ".join(href for _, href in host_meta_links(server)))


class ResourceTests(TestCase):
    def setUp(self) -> None:
        self.links: dict = {"t2.example1.com": object()}
        self.server = fake_server(links=self.links)
        self.root = well_known_resource(self.server)

    def child(self, name: bytes) -> HostMetaResource:
        return self.root.children[name]

    def test_xrd_valid_and_lists_every_node(self) -> None:
        request, body = get(self.child(b"host-meta"), host="example2.com:5281")
        self.assertEqual(request.responseCode or 200, 200)
        self.assertEqual(header(request, b"content-type"), "application/xrd+xml; charset=utf-8")
        self.assertEqual(header(request, b"access-control-allow-origin"), "*")
        self.assertTrue(body.startswith(b"<?xml"))
        self.assertEqual(sorted(xrd_links(body)), sorted(host_meta_links(self.server)))
        self.assertEqual(len(xrd_links(body)), 4)

    def test_jrd_valid_and_same_links(self) -> None:
        request, body = get(self.child(b"host-meta.json"), host="EXAMPLE3.com.")
        self.assertEqual(request.responseCode or 200, 200)
        self.assertEqual(header(request, b"content-type"), "application/json")
        self.assertEqual(header(request, b"access-control-allow-origin"), "*")
        self.assertEqual(jrd_links(body), host_meta_links(self.server))

    def test_answer_changes_with_membership(self) -> None:
        _, before = get(self.child(b"host-meta.json"))
        self.links.clear()
        _, after = get(self.child(b"host-meta.json"))
        self.assertIn("t2.example1.com", before.decode())
        self.assertNotIn("t2.example1.com", after.decode())

    def test_domain_must_be_a_vhost(self) -> None:
        for host, domain in (("t1.example1.com", None), ("evil.example", None), (None, None),
                             ("example2.com", "evil.example"), ("[::1]:5281", None)):
            request, body = get(self.child(b"host-meta"), host=host, domain=domain)
            self.assertEqual(request.responseCode, 404, (host, domain))
            self.assertNotIn(b"XRD", body)

    def test_domain_parameter_overrides_host(self) -> None:
        request, body = get(self.child(b"host-meta.json"), host="t1.example1.com:5281", domain="example2.com")
        self.assertEqual(request.responseCode or 200, 200)
        self.assertEqual(len(jrd_links(body)), 4)

    def test_extra_path_is_404(self) -> None:
        request, _ = get(self.child(b"host-meta"), postpath=[b"x"])
        self.assertEqual(request.responseCode, 404)

    def test_preflight(self) -> None:
        request, body = get(self.child(b"host-meta.json"), method=b"OPTIONS")
        self.assertEqual(request.responseCode, 204)
        self.assertEqual(body, b"")
        self.assertEqual(header(request, b"access-control-allow-origin"), "*")
        self.assertIn("GET", header(request, b"access-control-allow-methods"))


class ListenerTests(TestCase):
    """Real BOSH and ws2s TLS listeners: host-meta on both, then the advertised WebSocket URL works."""

    timeout = 60

    async def test_served_on_http_ports_and_links_usable(self) -> None:
        running = await start_server(self, components=("bosh", "ws2s"), domains=("example2.com",),
                                     cert_names=("node1.test",))
        await running.add_user("user@example2.com", "secret pass")
        ca_file = os.path.join(running.directory, "ca.pem")
        with open(ca_file, "wb") as f:
            f.write(test_ca().root_pem())
        resolve = {"node1.test": "127.0.0.1"}
        bosh, ws = running.ports["bosh"]["ssl"], running.ports["ws2s"]["ssl"]
        expected = sorted([(REL_BOSH, f"https://node1.test:{bosh}/http-bind"), (REL_WEBSOCKET, f"wss://node1.test:{ws}/")])

        def scenario():
            results = {}
            for port in (bosh, ws):
                for name in ("host-meta", "host-meta.json"):
                    url = f"https://node1.test:{port}/.well-known/{name}?domain=example2.com"
                    results[(port, name)] = fetch_host_meta(url, ca_file=ca_file, resolve=resolve,
                                                            origin="https://web.example")
            refused = fetch_host_meta(f"https://node1.test:{ws}/.well-known/host-meta", ca_file=ca_file,
                                      resolve=resolve)
            client = Tip1Client("example2.com", ca_file=ca_file, resolve=resolve)
            endpoints = client.discover([f"https://node1.test:{bosh}/.well-known/host-meta.json?domain=example2.com"])
            session = client.connect(endpoints, "user", "secret pass")
            session.close()
            return results, refused, session.jid

        results, refused, jid = await deferToThread(scenario)
        for key, meta in results.items():
            self.assertEqual(meta.status, 200, key)
            self.assertEqual(meta.headers.get("access-control-allow-origin"), "*", key)
            self.assertEqual(sorted(meta.links), expected, key)
        self.assertEqual(refused.status, 404)  # Host: node1.test is not a vhost
        self.assertTrue(jid.startswith("user@example2.com/"), jid)
