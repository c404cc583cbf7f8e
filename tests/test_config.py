"""Tests for xmppcluster.config: the init.properties grammar, the registry, listeners and check-config."""

from __future__ import annotations

import dataclasses
import io
import os
import re
import sys

from twisted.trial import unittest

from xmppcluster import config
from xmppcluster.config import ClusterNode, ConfigError, Listener, load, parse_text

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SEED_ESCAPED = "ws2s/connections/ports\\[i\\]=5290,5291\n"
SEED_UNESCAPED = "ws2s/connections/ports[i]=5290,5291\n"
SEED_REST = "ws2s/connections/5291/socket=ssl\nws2s/connections/5291/type=accept\nbosh/send-node-hostname[B]=false\n"


def parse(text: str, **kw) -> config.Config:
    return parse_text(text, "test.properties", **kw)


class GrammarTests(unittest.TestCase):
    """java.util.Properties rules."""

    def test_separators_and_whitespace(self):
        for line in ("--admins=a@example.com", "--admins : a@example.com", "   --admins   =   a@example.com   ",
                     "--admins a@example.com", "--admins\t=\ta@example.com\t", "--admins:a@example.com"):
            self.assertEqual(parse(line).admins, ["a@example.com"], line)

    def test_comments_and_blank_lines(self):
        cfg = parse("# --admins=x@y\n   ! --admins=y@z\n\n   \n--admins=a@b\n")
        self.assertEqual(cfg.admins, ["a@b"])
        self.assertEqual(cfg.warnings, [])

    def test_comment_line_ending_in_backslash_does_not_continue(self):
        cfg = parse("# comment \\\n--admins=a@b\n")
        self.assertEqual(cfg.admins, ["a@b"])

    def test_continuation_lines(self):
        cfg = parse("--virt-hosts = a.example, \\\n      b.example,\\\n\tc.example\n--admins=x@a.example\n")
        self.assertEqual(cfg.virt_hosts, ["a.example", "b.example", "c.example"])
        self.assertEqual(cfg.admins, ["x@a.example"])

    def test_even_backslashes_do_not_continue(self):
        cfg = parse("--ssl-certs-location=c:\\\\\\\\\n--admins=a@b\n")
        self.assertEqual(cfg.ssl_certs_location, "c:\\\\")
        self.assertEqual(cfg.admins, ["a@b"])

    def test_continuation_line_numbers_in_errors(self):
        e = self.assertRaises(ConfigError, parse, "\n--max-xml-depth = \\\n   abc\n")
        self.assertTrue(str(e).startswith("test.properties:2: key '--max-xml-depth' = 'abc': expected"), str(e))

    def test_escapes_in_key_and_value(self):
        cfg = parse("--ssl-certs-location = my\\ certs\\=\\:\\u00e9\\t\n")
        self.assertEqual(cfg.ssl_certs_location, "my certs=:\u00e9\t")

    def test_escaped_separator_in_key(self):
        cfg = parse("foo\\=bar/x=1\n")
        self.assertEqual(cfg.warnings, ["test.properties:1: unknown key 'foo=bar/x' (ignored)"])

    def test_escaped_trailing_space_kept(self):
        self.assertEqual(parse("--ssl-def-cert-domain=abc\\ \n").ssl_def_cert_domain, "abc ")

    def test_surrogate_pair_escape(self):
        self.assertEqual(parse("--ssl-def-cert-domain=\\ud83d\\ude00\n").ssl_def_cert_domain, "\U0001f600")

    def test_malformed_unicode_escape(self):
        e = self.assertRaises(ConfigError, parse, "--admins=a@b\n--ssl-def-cert-domain=\\u12g4\n")
        self.assertIn("test.properties:2:", str(e))
        self.assertIn("malformed \\uXXXX escape", str(e))

    def test_crlf_and_cr_line_endings(self):
        self.assertEqual(parse("--admins=a@b\r\n--vhost-max-users=3\r--max-xml-depth=5").get("--", "max-xml-depth"), 5)

    def test_later_line_wins_with_warning(self):
        cfg = parse("bosh/max-wait=10\nbosh/max-wait[I]=20\n")
        self.assertEqual(cfg.get("bosh", "max-wait"), 20)
        self.assertEqual(cfg.warnings,
                         ["test.properties:2: key 'bosh/max-wait' set again (replaces test.properties:1)"])

    def test_split_key_first_and_last_slash(self):
        self.assertEqual(config.split_key("ws2s/connections/ports[i]"), ("ws2s", "connections", "ports"))
        self.assertEqual(config.split_key("ws2s/connections/5291/socket"), ("ws2s", "connections/5291", "socket"))
        self.assertEqual(config.split_key("bosh/send-node-hostname[B]"), ("bosh", "", "send-node-hostname"))
        self.assertRaises(ValueError, config.split_key, "novalue")

    def test_key_without_slash_is_error(self):
        e = self.assertRaises(ConfigError, parse, "\nfoo=bar\n")
        self.assertEqual(str(e), "test.properties:2: key 'foo' = 'bar': expected a key of the form component/key "
                                 "or --global-name")

    def test_config_type_ignored_with_warning(self):
        cfg = parse("config-type=--gen-config-def\n")
        self.assertEqual(len(cfg.warnings), 1)
        self.assertIn("config-type", cfg.warnings[0])

    def test_unknown_keys_warn(self):
        cfg = parse("sess-man/plugins-conf/x=1\n--no-such-thing=1\nbosh/connections/abc/socket=ssl\n")
        self.assertEqual(cfg.warnings, [
            "test.properties:1: unknown key 'sess-man/plugins-conf/x' (ignored)",
            "test.properties:2: unknown key '--no-such-thing' (ignored)",
            "test.properties:3: unknown key 'bosh/connections/abc/socket' (ignored)",
        ])


class TypeTests(unittest.TestCase):
    def test_booleans(self):
        for word, value in (("yes", True), ("TRUE", True), ("On", True), ("1", True),
                            ("no", False), ("False", False), ("OFF", False), ("0", False)):
            self.assertEqual(parse(f"bosh/send-node-hostname[B]={word}").get("bosh", "send-node-hostname"), value)

    def test_bad_boolean_is_error(self):
        e = self.assertRaises(ConfigError, parse, "bosh/send-node-hostname[B]=flase\n")
        self.assertEqual(str(e), "test.properties:1: key 'bosh/send-node-hostname[B]' = 'flase': expected a boolean "
                                 "(yes, true, on, 1, no, false, off, 0)")

    def test_no_suffix_uses_registered_type(self):
        cfg = parse("bosh/send-node-hostname=off\nbosh/max-wait=0x3c\n--auth-failure-delay=2.5\n")
        self.assertIs(cfg.get("bosh", "send-node-hostname"), False)
        self.assertEqual(cfg.get("bosh", "max-wait"), 60)
        self.assertEqual(cfg.get("--", "auth-failure-delay"), 2.5)

    def test_integer_decode(self):
        for text, value in (("0x40", 64), ("#40", 64), ("0100", 64), ("64", 64), ("+64", 64), ("0X40", 64)):
            self.assertEqual(parse(f"--max-xml-depth[I]={text}").get("--", "max-xml-depth"), value, text)

    def test_bad_integers(self):
        for text in ("abc", "08", "1.5", "", "0x", "2147483648", "1 2"):
            e = self.assertRaises(ConfigError, parse, f"--max-xml-depth[I]={text}")
            self.assertIn("expected an integer >= 4", str(e), text)

    def test_integer_minimum(self):
        e = self.assertRaises(ConfigError, parse, "--max-stanza-size=9999")
        self.assertEqual(str(e), "test.properties:1: key '--max-stanza-size' = '9999': expected an integer >= 10000")
        e = self.assertRaises(ConfigError, parse, "--scram-iterations=1000")
        self.assertIn("from 4096 to 10000000", str(e))

    def test_float(self):
        self.assertEqual(parse("--auth-failure-max-delay[F]=1e2").get("--", "auth-failure-max-delay"), 100.0)
        for bad in ("nan", "inf", "abc", "-1"):
            self.assertRaises(ConfigError, parse, f"--auth-failure-max-delay[F]={bad}")

    def test_string_list_trimmed(self):
        self.assertEqual(parse("ws2s/allowed-origins[s]= https://a.example ,https://b.example,, ")
                         .get("ws2s", "allowed-origins"), ["https://a.example", "https://b.example"])

    def test_wrong_suffix_is_error(self):
        e = self.assertRaises(ConfigError, parse, "bosh/send-node-hostname[I]=1\n")
        self.assertEqual(str(e), "test.properties:1: key 'bosh/send-node-hostname[I]' = '1': expected type suffix "
                                 "[B] or no suffix (bosh/send-node-hostname is a boolean), not [I]")

    def test_unknown_suffix_is_error(self):
        e = self.assertRaises(ConfigError, parse, "bosh/max-wait[Q]=1\n")
        self.assertEqual(str(e), "test.properties:1: key 'bosh/max-wait[Q]' = '1': expected a type suffix among "
                                 "[S] [s] [B] [b] [I] [i] [L] [l] [F], not [Q]")
        self.assertRaises(ConfigError, parse, "unknown/key[Q]=1\n")

    def test_choices(self):
        e = self.assertRaises(ConfigError, parse, "--user-db=mysql\n")
        self.assertIn("expected one of: sqlite, pgsql", str(e))

    def test_get_unregistered_raises(self):
        self.assertRaises(KeyError, config.Config().get, "bosh", "nope")


class SeedTests(unittest.TestCase):
    """The seed document's lines, verbatim."""

    def check_seed(self, text):
        cfg = parse(text)
        self.assertEqual(cfg.warnings, [])
        self.assertEqual(cfg.get("ws2s", "connections/ports"), [5290, 5291])
        self.assertEqual(cfg.listeners("ws2s"), [
            Listener("ws2s", 5290, "plain", "accept", ("*",), False),
            Listener("ws2s", 5291, "ssl", "accept", ("*",), False),
        ])
        self.assertFalse(cfg.listeners("ws2s")[0].tls)
        self.assertTrue(cfg.listeners("ws2s")[1].tls)
        self.assertIs(cfg.get("bosh", "send-node-hostname"), False)

    def test_seed_escaped(self):
        self.check_seed(SEED_ESCAPED + SEED_REST)

    def test_seed_unescaped(self):
        self.check_seed(SEED_UNESCAPED + SEED_REST)

    def test_seed_per_port_before_ports_line(self):
        self.check_seed(SEED_REST + SEED_ESCAPED)

    def test_seed_file_from_document(self):
        # The configuration lines exactly as the seed documents print them (tests/fixtures).
        with open(os.path.join(ROOT, "tests", "fixtures", "seed-lines.properties")) as f:
            lines = f.read().splitlines()
        self.assertIn("ws2s/connections/ports\\[i\\]=5290,5291", lines)
        self.check_seed("\n".join(lines) + "\n")

    def test_socket_typo_rejected(self):
        e = self.assertRaises(ConfigError, parse, SEED_ESCAPED + "ws2s/connections/5291/socket=sll\n")
        self.assertEqual(str(e), "test.properties:2: key 'ws2s/connections/5291/socket' = 'sll': "
                                 "expected one of: plain, ssl")
        self.assertEqual((e.filename, e.line, e.key, e.value), ("test.properties", 2, "ws2s/connections/5291/socket",
                                                                 "sll"))

    def test_type_typo_rejected(self):
        e = self.assertRaises(ConfigError, parse, SEED_ESCAPED + "ws2s/connections/5291/type=acept\n")
        self.assertIn("expected one of: accept, connect", str(e))


class ListenerTests(unittest.TestCase):
    def test_defaults(self):
        cfg = parse("")
        self.assertEqual(cfg.all_listeners(), [
            Listener("c2s", 5222, "plain", "accept", ("*",), True),
            Listener("c2s", 5223, "ssl", "accept", ("*",), False),
            Listener("bosh", 5280, "plain", "accept", ("*",), False),
            Listener("ws2s", 5290, "plain", "accept", ("*",), False),
        ])
        self.assertEqual(cfg.listeners("cl-comp"), [])
        self.assertEqual(config.Config().all_listeners(), cfg.all_listeners())

    def test_tls_required_off(self):
        cfg = parse("c2s/connections/5222/tls/required[B]=false\n")
        self.assertFalse(cfg.listeners("c2s")[0].tls_required)

    def test_ifc_and_global_shortcut(self):
        cfg = parse("--c2s-ports=5222,5333\nc2s/connections/5333/ifc[s]=127.0.0.1, ::1\n")
        self.assertEqual(cfg.listeners("c2s")[1], Listener("c2s", 5333, "plain", "accept", ("127.0.0.1", "::1"), True))
        cfg = parse("--c2s-ports=5222\nc2s/connections/ports[i]=5999\n")
        self.assertEqual([lst.port for lst in cfg.listeners("c2s")], [5999])

    def test_bad_ifc(self):
        e = self.assertRaises(ConfigError, parse, "c2s/connections/5222/ifc=not an address\n")
        self.assertIn("test.properties:1: key 'c2s/connections/5222/ifc'", str(e))

    def test_empty_ports_disables(self):
        self.assertEqual(parse("bosh/connections/ports[i]=\n").listeners("bosh"), [])

    def test_port_range(self):
        for port in ("0", "65536", "-1"):
            e = self.assertRaises(ConfigError, parse, f"ws2s/connections/ports[i]=5290,{port}\n")
            self.assertIn(f"expected a comma-separated list of integers from 1 to 65535 (bad element '{port}')",
                          str(e))

    def test_port_not_listed(self):
        e = self.assertRaises(ConfigError, parse, SEED_ESCAPED + "ws2s/connections/5292/socket=ssl\n")
        self.assertEqual(str(e), "test.properties:2: key 'ws2s/connections/5292/socket' = 'ssl': expected a port "
                                 "listed in ws2s/connections/ports[i] (5290, 5291); port 5292 is not")

    def test_duplicate_port(self):
        self.assertRaises(ConfigError, parse, "ws2s/connections/ports[i]=5290,5290\n")
        e = self.assertRaises(ConfigError, parse, "ws2s/connections/ports[i]=5222\n")
        self.assertIn("expected ports not already used by c2s (5222)", str(e))

    def test_same_port_other_interfaces(self):
        cfg = parse("c2s/connections/5222/ifc=127.0.0.1\nws2s/connections/ports[i]=5222\n"
                    "ws2s/connections/5222/ifc=127.0.0.2\n")
        self.assertEqual(len(cfg.listeners("ws2s")), 1)

    def test_cluster_listener(self):
        cfg = parse("--cluster-mode=true\n--node-name=t1.example.com\n")
        self.assertEqual(cfg.listeners("cl-comp"), [Listener("cl-comp", 5277, "plain", "accept", ("*",), True)])

    def test_get_per_port(self):
        cfg = parse(SEED_ESCAPED + SEED_REST)
        self.assertEqual(cfg.get("ws2s", "connections/5291/socket"), "ssl")
        self.assertEqual(cfg.get("ws2s", "connections/5290/socket"), "plain")
        self.assertEqual(cfg.get("c2s", "connections/5223/socket"), "ssl")


class GlobalsTests(unittest.TestCase):
    def test_defaults(self):
        self.patch(config.builder, "_default_node_name", lambda: "host.example.net")
        cfg = load(None)
        self.assertIsNone(cfg.source)
        self.assertEqual(cfg.virt_hosts, ["localhost"])
        self.assertEqual(cfg.node_name, "host.example.net")
        self.assertEqual(cfg.user_db_uri, "sqlite:///data/xmppcluster.sqlite")
        self.assertEqual((cfg.ssl_certs_location, cfg.ssl_def_cert_domain), ("certs", "default"))
        self.assertEqual(cfg.get("--", "max-stanza-size"), 262144)
        self.assertEqual(cfg.get("--", "--idle-timeout"), 600)
        self.assertEqual(cfg.get("bosh", "max-body-size"), 524288)

    def test_vhost_options(self):
        cfg = parse("--virt-hosts = Example.com:-anon:register:max-users=1000, \\\n guests.example.com:anon\n"
                    "--vhost-tls-required=false\n")
        self.assertEqual(cfg.virt_hosts, ["example.com", "guests.example.com"])
        self.assertEqual(cfg.vhost_options["example.com"], {"anon": False, "register": True, "max-users": 1000})
        self.assertIs(cfg.vhost_option("guests.example.com", "anon"), True)
        self.assertIs(cfg.vhost_option("guests.example.com", "register"), False)
        self.assertEqual(cfg.vhost_option("guests.example.com", "max-users"), 0)
        self.assertIs(cfg.vhost_option("example.com", "tls-required"), False)
        self.assertIs(parse("").vhost_option("localhost", "tls-required"), True)

    def test_bad_vhost_option(self):
        e = self.assertRaises(ConfigError, parse, "--virt-hosts=example.com:-tls-requird\n")
        self.assertIn("expected vhost options among anon, register, max-users, tls-required", str(e))
        self.assertRaises(ConfigError, parse, "--virt-hosts=example.com:max-users=lots\n")
        self.assertRaises(ConfigError, parse, "--virt-hosts=example.com:max-users\n")
        self.assertRaises(ConfigError, parse, "--virt-hosts=a@b\n")
        self.assertRaises(ConfigError, parse, "--virt-hosts=\n")

    def test_admins(self):
        self.assertEqual(parse("--admins=Admin@Example.COM").admins, ["Admin@example.com"])
        self.assertRaises(ConfigError, parse, "--admins=admin@example.com/res\n")

    def test_cluster_nodes(self):
        cfg = parse("--cluster-mode=true\n--node-name=t1.example.com\n"
                    "--cluster-nodes=t1.example.com:secret:5277,t2.example.com\n")
        self.assertEqual(cfg.cluster_nodes, [ClusterNode("t1.example.com", "secret", 5277, None),
                                             ClusterNode("t2.example.com", None, 5277, None)])
        self.assertTrue(cfg.cluster_mode)
        self.assertEqual(cfg.warnings, [])
        self.assertNotIn("secret", repr(cfg))

    def test_cluster_nodes_with_address(self):
        cfg = parse("--cluster-nodes=t1.example.com:s1:5300:10.0.0.1,t2.example.com:s2:5301:fd00::2\n")
        self.assertEqual(cfg.cluster_nodes, [ClusterNode("t1.example.com", "s1", 5300, "10.0.0.1"),
                                             ClusterNode("t2.example.com", "s2", 5301, "fd00::2")])

    def test_cluster_nodes_errors_hide_secret(self):
        for bad in ("t1.example.com:hunter2:99999", "t1.example.com:hunter2:5277:bad address",
                    "bad name:hunter2", "t1.example.com:hunter2,t1.example.com:hunter2"):
            e = self.assertRaises(ConfigError, parse, f"--cluster-nodes={bad}\n")
            self.assertNotIn("hunter2", str(e))
            self.assertIn("test.properties:1: key '--cluster-nodes'", str(e))

    def test_localhost_refused_in_cluster_mode(self):
        e = self.assertRaises(ConfigError, parse, "--cluster-mode=true\n--node-name=localhost\n")
        self.assertIn("test.properties:2: key '--node-name' = 'localhost': expected a real host name in cluster mode",
                      str(e))
        self.patch(config.builder, "_default_node_name", lambda: "localhost.localdomain")
        e = self.assertRaises(ConfigError, parse, "--cluster-mode=true\n")
        self.assertIn("test.properties:1: key '--cluster-mode' = 'true': expected --node-name to be set", str(e))
        self.assertEqual(parse("--node-name=localhost\n").node_name, "localhost")

    def test_own_node_missing_from_list_warns(self):
        cfg = parse("--cluster-mode=true\n--node-name=t3.example.com\n--cluster-nodes=t1.example.com\n")
        self.assertEqual(len(cfg.warnings), 1)
        self.assertIn("t3.example.com", cfg.warnings[0])

    def test_user_db_uri(self):
        self.assertEqual(parse("--user-db-uri=postgresql://x:y@db/xmpp").user_db_uri, "postgresql://x:y@db/xmpp")
        self.assertEqual(parse("--user-db-uri=jdbc:postgresql://db/tigase?user=t&password=p").user_db_uri,
                         "postgresql://db/tigase?user=t&password=p")
        e = self.assertRaises(ConfigError, parse, "--user-db-uri=mysql://u:topsecret@db/x\n")
        self.assertNotIn("topsecret", str(e))
        self.assertIn("expected sqlite:///PATH or postgresql://", str(e))
        cfg = parse("--user-db=pgsql\n")
        self.assertEqual(len(cfg.warnings), 1)
        self.assertEqual(parse("--user-db=pgsql\n--user-db-uri=postgres://db/x").warnings, [])

    def test_sm_plugins(self):
        cfg = parse("--sm-plugins=+ping,-vcard-temp,jabber:iq:version\n")
        self.assertEqual(cfg.sm_plugins_enabled, ["ping", "jabber:iq:version"])
        self.assertEqual(cfg.sm_plugins_disabled, ["vcard-temp"])
        self.assertRaises(ConfigError, parse, "--sm-plugins=+ping,-ping\n")
        self.assertRaises(ConfigError, parse, "--sm-plugins=+bad name\n")

    def test_cross_checks(self):
        self.assertRaises(ConfigError, parse, "--auth-failure-delay=5\n--auth-failure-max-delay=2\n")
        e = self.assertRaises(ConfigError, parse, "--max-stanza-size=600000\n")
        self.assertIn("key 'bosh/max-body-size' = '524288': expected a value >= --max-stanza-size", str(e))


class OverrideAndLoadTests(unittest.TestCase):
    def write(self, text: str, mode: int = 0o600) -> str:
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(path, mode)
        return path

    def test_overrides_after_file(self):
        path = self.write("--node-name=t1.example.com\n--cluster-mode=true\n")
        cfg = load(path, {"--node-name": "t2.example.com"})
        self.assertEqual(cfg.node_name, "t2.example.com")
        self.assertEqual(cfg.source, path)
        self.assertIn("set again", cfg.warnings[0])

    def test_override_error_names_command_line(self):
        e = self.assertRaises(ConfigError, parse, "", overrides={"--cluster-mode": "maybe"})
        self.assertTrue(str(e).startswith("<command line>: key '--cluster-mode' = 'maybe': expected a boolean"))

    def test_missing_default_file_gives_defaults(self):
        cwd = os.getcwd()
        empty = self.mktemp()
        os.makedirs(empty)
        os.chdir(empty)
        self.addCleanup(os.chdir, cwd)
        cfg = load("etc/init.properties")
        self.assertIsNone(cfg.source)
        self.assertEqual(cfg.virt_hosts, ["localhost"])

    def test_missing_explicit_file_is_error(self):
        e = self.assertRaises(ConfigError, load, self.mktemp())
        self.assertIn("file not found", str(e))

    def test_world_readable_secret_warns(self):
        path = self.write("--cluster-nodes=t1.example.com:s3cret\n", 0o644)
        cfg = load(path)
        self.assertIn("readable by every user", cfg.warnings[-1])
        self.assertEqual(load(self.write("--cluster-nodes=t1.example.com:s3cret\n", 0o600)).warnings, [])

    def test_cluster_secret_from_a_file(self):
        secret = self.write("  s3cret from a file \nignored second line\n")
        path = self.write(f"--cluster-nodes=t1.example.com:@{secret}:5277,t2.example.com:other\n", 0o644)
        cfg = load(path)
        self.assertEqual([n.secret for n in cfg.cluster_nodes], ["s3cret from a file", "other"])
        self.assertEqual(cfg.warnings, [f"{path}: contains secrets but is readable by every user (chmod o-r)"])
        only_files = self.write(f"--cluster-nodes=t1.example.com:@{secret}\n", 0o644)
        self.assertEqual(load(only_files).warnings, [])  # the file itself holds no secret
        os.chmod(secret, 0o644)
        self.assertIn("holds a cluster secret but is readable by every user", load(only_files).warnings[0])

    def test_cluster_secret_file_errors(self):
        missing = self.mktemp()
        e = self.assertRaises(ConfigError, parse, f"--cluster-nodes=t1.example.com:@{missing}:5277\n")
        self.assertIn(f"a readable secret file (cannot read '{missing}'", str(e))
        self.assertIn(f"@{missing}", str(e))  # the path is shown: it is not the secret
        empty = self.write("\n")
        e = self.assertRaises(ConfigError, parse, f"--cluster-nodes=t1.example.com:@{empty}\n")
        self.assertIn("the file is empty", str(e))

    def test_cluster_secret_on_the_command_line_warns_once(self):
        path = self.write("--node-name=t1.example.com\n")
        cfg = load(path, {"--cluster-nodes": "t1.example.com:s3cret,t2.example.com:0ther"})
        warnings = [w for w in cfg.warnings if "command line" in w]
        self.assertEqual(len(warnings), 1)
        self.assertIn("name:@/path/to/secret-file", warnings[0])
        self.assertNotIn("s3cret", " ".join(cfg.warnings))
        secret = self.write("s3cret\n")
        quiet = load(path, {"--cluster-nodes": f"t1.example.com:@{secret},t2.example.com"})
        self.assertEqual([w for w in quiet.warnings if "command line" in w], [])
        self.assertEqual(load(self.write("--cluster-nodes=t1.example.com:s3cret\n")).warnings, [])

    def test_sample_file(self):
        cfg = load(os.path.join(ROOT, "etc", "init.properties"))
        self.assertEqual(cfg.warnings, [])
        self.assertEqual(cfg.all_listeners(), parse("").all_listeners())
        self.assertEqual(cfg.virt_hosts, ["localhost"])

    def test_sample_seed_lines_uncommented(self):
        with open(os.path.join(ROOT, "etc", "init.properties"), encoding="utf-8") as f:
            text = f.read()
        for line in (SEED_ESCAPED + SEED_REST).splitlines():
            self.assertIn("#" + line + "\n", text)
            text = text.replace("#" + line + "\n", line + "\n")
        cfg = parse(text)
        self.assertEqual(cfg.warnings, [])
        self.assertEqual([(lst.port, lst.socket) for lst in cfg.listeners("ws2s")], [(5290, "plain"), (5291, "ssl")])


class CheckConfigTests(unittest.TestCase):
    def run_check(self, text: str) -> tuple[int, str, str]:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        out, err = io.StringIO(), io.StringIO()
        self.patch(sys, "stdout", out)
        self.patch(sys, "stderr", err)
        return config.check_config_main(path), out.getvalue(), err.getvalue()

    def test_seed_output(self):
        rc, out, err = self.run_check(SEED_ESCAPED + SEED_REST)
        self.assertEqual(rc, 0)
        self.assertEqual(err, "")
        self.assertEqual(out.splitlines(), ["c2s 5222 plain accept *", "c2s 5223 ssl accept *",
                                            "bosh 5280 plain accept *", "ws2s 5290 plain accept *",
                                            "ws2s 5291 ssl accept *"])

    def test_warnings_to_stderr(self):
        rc, out, err = self.run_check("foo/bar=1\n")
        self.assertEqual(rc, 0)
        self.assertIn("unknown key 'foo/bar' (ignored)", err)
        self.assertNotIn("foo", out)

    def test_admins_checked_without_notice(self):
        """--admins is used by the administration commands: checked, prepared, and no notice any more."""
        rc, out, err = self.run_check("--admins=boss@example.com\n")
        self.assertEqual(rc, 0)
        self.assertEqual(err, "")
        self.assertIn("c2s 5222 plain accept *", out)
        self.assertEqual(parse("--admins=boss@Example.COM").admins, ["boss@example.com"])
        self.assertEqual(parse("--admins=boss@example.com").notices(), [])
        rc, out, err = self.run_check("--admins=not a jid\n")
        self.assertEqual(rc, 2)

    def test_error(self):
        rc, out, err = self.run_check(SEED_ESCAPED + "ws2s/connections/5291/socket=sll\n")
        self.assertEqual(rc, 2)
        self.assertEqual(out, "")
        self.assertEqual(len(err.splitlines()), 1)
        self.assertRegex(err, r"^.+:2: key 'ws2s/connections/5291/socket' = 'sll': expected one of: plain, ssl\n$")


class SectionTests(unittest.TestCase):
    """The typed sections consumers take instead of key lookups: built once, frozen, from the registry."""

    SECTIONS = {"limits": config.Limits, "auth": config.AuthSettings, "quotas": config.Quotas,
                "peers": config.PeerSettings, "bosh": config.BoshSettings, "websocket": config.WebSocketSettings,
                "cluster": config.ClusterSettings}

    def test_defaults_match_registry(self):
        """A section's own defaults are the registered ones (a bare ``Limits()`` in a test means the defaults)."""
        for name, cls in self.SECTIONS.items():
            self.assertEqual(getattr(config.Config(), name), cls(), name)

    def test_values_reach_sections(self):
        cfg = parse("--max-stanza-size=20000\n--scram-iterations=5000\n--offline-max-messages=3\n"
                    "--trusted-proxies=10.0.0.0/8\nbosh/consider-secure=true\nbosh/max-wait=10\n"
                    "ws2s/ping-interval=5\ncl-comp/drain-timeout=2.5\n")
        self.assertEqual(cfg.limits.max_stanza_bytes, 20000)
        self.assertEqual(cfg.auth.scram_iterations, 5000)
        self.assertEqual(cfg.quotas.offline_max_messages, 3)
        self.assertEqual(cfg.peers.trusted_proxies, ("10.0.0.0/8",))
        self.assertEqual(cfg.peers.secure_components, ("bosh",))
        self.assertEqual(cfg.bosh.max_wait, 10)
        self.assertEqual(cfg.websocket.ping_interval, 5.0)
        self.assertEqual(cfg.cluster.drain_timeout, 2.5)

    def test_vhost_sections(self):
        cfg = parse("--virt-hosts=example.com:register:max-users=1000:-tls-required,guests.example.com:anon\n"
                    "--vhost-tls-required=true\n")
        self.assertEqual(cfg.vhost("Example.COM"), config.VhostSettings(register=True, max_users=1000,
                                                                       tls_required=False))
        self.assertEqual(cfg.vhost("guests.example.com"), config.VhostSettings(anonymous=True))
        self.assertEqual(cfg.vhost("elsewhere.example"), config.VhostSettings())  # the global defaults
        self.assertEqual(parse("--vhost-register-enabled=true").vhost("localhost").register, True)

    def test_sections_are_frozen(self):
        cfg = parse("")
        for name in self.SECTIONS:
            section = getattr(cfg, name)
            self.assertIs(section, getattr(cfg, name))  # built once
            field = next(iter(dataclasses.fields(section))).name
            self.assertRaises(dataclasses.FrozenInstanceError, setattr, section, field, None)


class DocsTests(unittest.TestCase):
    def read(self, *parts: str) -> str:
        with open(os.path.join(ROOT, *parts), encoding="utf-8") as f:
            return f.read()

    def test_doc_lists_every_key(self):
        doc = self.read("docs", "configuration.rst")
        for setting in config.settings():
            self.assertIn(f"``{setting.name}``", doc)

    def test_doc_table_is_current(self):
        doc = self.read("docs", "configuration.rst")
        m = re.search(r"\.\. BEGIN settings-table\n\n(.*?)\n\.\. END settings-table", doc, re.DOTALL)
        self.assertIsNotNone(m)
        self.assertEqual(m.group(1), config.settings_table(),
                         "regenerate: python -m xmppcluster.config docs/configuration.rst")

    def test_sample_documents_every_key(self):
        sample = self.read("etc", "init.properties")
        for setting in config.settings():
            pattern = re.escape(setting.name).replace(re.escape("<port>"), "[0-9]+")
            pattern = pattern.replace(re.escape("<domain>"), "[^/]+")
            self.assertRegex(sample, rf"(?m)^#?{pattern}(\[.\])?\s*=", setting.name)

    def test_settings_table_has_defaults(self):
        table = config.settings_table()
        self.assertIn("``--max-stanza-size``\n     - ``[I]`` integer\n     - ``262144``", table)
