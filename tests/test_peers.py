"""The client behind a request: trusted proxies' headers, and which hops count as encrypted."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from xmppcluster.streams.peers import ClientPolicy, forwarded_elements, is_loopback, parse_address


def headers(**values: str):
    table = {name.replace("_", "-"): value for name, value in values.items()}
    return table.get


class AddressTests(SynchronousTestCase):
    def test_forms(self) -> None:
        self.assertEqual(str(parse_address("192.0.2.1")), "192.0.2.1")
        self.assertEqual(str(parse_address("192.0.2.1:4711")), "192.0.2.1")
        self.assertEqual(str(parse_address("[2001:db8::1]:4711")), "2001:db8::1")
        self.assertEqual(str(parse_address('"[2001:db8::1]"')), "2001:db8::1")
        self.assertEqual(str(parse_address("::ffff:192.0.2.1")), "192.0.2.1")
        for bad in ("unknown", "_hidden", "", "1.2.3", "example.com"):
            self.assertIsNone(parse_address(bad), bad)

    def test_loopback(self) -> None:
        for address in ("127.0.0.1", "127.9.9.9", "::1", "::ffff:127.0.0.1"):
            self.assertTrue(is_loopback(address), address)
        self.assertFalse(is_loopback("192.0.2.1"))
        self.assertFalse(is_loopback("?"))

    def test_forwarded_header(self) -> None:
        value = 'for=192.0.2.60;proto=http;by=203.0.113.43, For="[2001:db8:cafe::17]:4711";Proto=HTTPS'
        self.assertEqual(forwarded_elements(value), [
            {"for": "192.0.2.60", "proto": "http", "by": "203.0.113.43"},
            {"for": "[2001:db8:cafe::17]:4711", "proto": "HTTPS"},
        ])
        self.assertEqual(forwarded_elements('for="a\\"b"'), [{"for": 'a"b'}])
        self.assertEqual(forwarded_elements("for=1.2.3.4 garbage, for=5.6.7.8"), [{"for": "1.2.3.4"}])


class OriginTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.policy = ClientPolicy(["127.0.0.1", "10.0.0.0/8"])

    def test_untrusted_peer_headers_ignored(self) -> None:
        origin = self.policy.origin("192.0.2.9", False, "bosh",
                                    headers(x_forwarded_for="198.51.100.1", x_forwarded_proto="https"))
        self.assertEqual((origin.address, origin.secure, origin.proxied), ("192.0.2.9", False, False))

    def test_trusted_proxy_names_client_and_scheme(self) -> None:
        origin = self.policy.origin("10.1.2.3", False, "bosh",
                                    headers(x_forwarded_for="198.51.100.1", x_forwarded_proto="https"))
        self.assertEqual((origin.address, origin.secure, origin.proxied), ("198.51.100.1", True, True))
        origin = self.policy.origin("10.1.2.3", False, "ws2s",
                                    headers(x_forwarded_for="198.51.100.1", x_forwarded_proto="http"))
        self.assertEqual((origin.address, origin.secure), ("198.51.100.1", False))

    def test_chain_walked_from_the_right(self) -> None:
        # The client forged the first entry; our proxies appended the real one and their own.
        chain = "6.6.6.6, 198.51.100.1, 10.9.9.9"
        origin = self.policy.origin("10.1.2.3", False, "bosh", headers(x_forwarded_for=chain))
        self.assertEqual(origin.address, "198.51.100.1")
        # Only proxies: the leftmost; an unreadable entry stops the walk at the proxy that passed it on.
        self.assertEqual(self.policy.origin("10.1.2.3", False, "bosh",
                                            headers(x_forwarded_for="10.0.0.5, 10.0.0.6")).address, "10.0.0.5")
        self.assertEqual(self.policy.origin("10.1.2.3", False, "bosh",
                                            headers(x_forwarded_for="unknown, 10.0.0.6")).address, "10.0.0.6")
        self.assertEqual(self.policy.origin("10.1.2.3", False, "bosh",
                                            headers(x_forwarded_for="junk")).address, "10.1.2.3")

    def test_rightmost_scheme_wins(self) -> None:
        origin = self.policy.origin("10.1.2.3", False, "bosh",
                                    headers(x_forwarded_for="198.51.100.1", x_forwarded_proto="https, http"))
        self.assertFalse(origin.secure)

    def test_forwarded_header_when_chosen(self) -> None:
        policy = ClientPolicy(["10.0.0.0/8"], header="forwarded")
        value = 'for=6.6.6.6;proto=https, for="[2001:db8::7]";proto=http, for=10.0.0.9;proto=https'
        origin = policy.origin("10.1.2.3", False, "bosh", headers(forwarded=value,
                                                                  x_forwarded_proto="https"))
        self.assertEqual((origin.address, origin.secure), ("2001:db8::7", False))
        # X-Forwarded-* are ignored when Forwarded is the configured header, and vice versa.
        origin = policy.origin("10.1.2.3", False, "bosh", headers(x_forwarded_for="198.51.100.1"))
        self.assertEqual(origin.address, "10.1.2.3")
        origin = self.policy.origin("10.1.2.3", False, "bosh", headers(forwarded="for=198.51.100.1;proto=https"))
        self.assertEqual((origin.address, origin.secure), ("10.1.2.3", False))

    def test_loopback_and_opt_ins(self) -> None:
        self.assertTrue(self.policy.origin("127.0.0.1", False, "bosh", headers()).secure)
        # A trusted proxy that states the scheme overrides the loopback rule; a remote client is not loopback.
        self.assertFalse(self.policy.origin("127.0.0.1", False, "bosh", headers(x_forwarded_proto="http")).secure)
        self.assertFalse(self.policy.origin("127.0.0.1", False, "bosh",
                                            headers(x_forwarded_for="198.51.100.1")).secure)
        strict = ClientPolicy([], secure_loopback=False, secure_components=["bosh"])
        self.assertFalse(strict.origin("127.0.0.1", False, "ws2s", headers()).secure)
        self.assertTrue(strict.origin("192.0.2.1", False, "bosh", headers()).secure)
        self.assertTrue(strict.origin("192.0.2.1", True, "ws2s", headers()).secure)
        self.assertFalse(strict.stream_secure("127.0.0.1", False))
        self.assertTrue(self.policy.stream_secure("::1", False))
