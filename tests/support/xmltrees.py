"""Element trees for serializer tests: what "the same tree" means, where each transport's XML is read back,
and hypothesis strategies for hostile trees (every name, namespace, value and text).

The oracle is our own parser reading back what we wrote, compared as namespace-expanded trees: never
another serializer's output.
"""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from twisted.words.xish.domish import Element

from xmppcluster.core import namespaces as ns
from xmppcluster.core.serializer import serialize
from xmppcluster.core.xml import XML_NS, StreamParser, parse_element
from xmppcluster.streams import tcp, websocket
from xmppcluster.streams.bosh_session import render_body

HTTPBIND = "http://jabber.org/protocol/httpbind"
XMLNS_NS = "http://www.w3.org/2000/xmlns/"
TCP_HEADER = (f"<stream:stream xmlns='{ns.CLIENT}' xmlns:stream='{ns.STREAMS}' to='example.com' "
              "version='1.0'>").encode()

#: Deterministic (derandomized, no example database); each property lowers max_examples to what the suite
#: can afford (the whole of tests/test_roundtrip.py runs in seconds).
PROPERTY = settings(max_examples=250, derandomize=True, database=None, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def canonical(element: Element, default: str = "") -> tuple:
    """A tree as XML Namespaces sees it: expanded names, attributes as a set, adjacent texts joined and
    empty ones dropped. ``default`` is the namespace an element without one inherits (domish's rules)."""
    own = element.defaultUri if element.defaultUri is not None else default
    uri = element.uri if element.uri is not None else own
    attributes = sorted(((key[0] or "", key[1]) if key.__class__ is tuple else ("", key), value)
                        for key, value in element.attributes.items())
    children: list = []
    for child in element.children:
        if isinstance(child, str):
            if not child:
                continue
            if children and isinstance(children[-1], str):
                children[-1] += str(child)
            else:
                children.append(str(child))
        else:
            children.append(canonical(child, own))
    return uri, element.name, tuple(attributes), tuple(children)


class _Collect:
    def __init__(self) -> None:
        self.elements: list[Element] = []

    def stream_started(self, root: Element) -> None:
        pass

    def element_received(self, element: Element) -> None:
        self.elements.append(element)

    def stream_ended(self) -> None:
        pass


def read_tcp(data: bytes) -> Element:
    """One element written on a client stream, read by our parser inside a stream header."""
    collect = _Collect()
    StreamParser(collect).feed(TCP_HEADER + data)
    (element,) = collect.elements
    return element


def read_bosh(data: bytes) -> Element:
    (element,) = list(parse_element(data).elements())
    return element


#: name -> (how the transport writes one element, how it is read back, the namespace it inherits)
CONTEXTS: dict[str, tuple[Callable[[Element], bytes], Callable[[bytes], Element], str]] = {
    "tcp": (tcp.serialize, read_tcp, ns.CLIENT),
    "websocket": (lambda e: websocket.serialize(e).encode(), parse_element, ""),
    "bosh": (lambda e: render_body({"sid": "s'1"}, [e]), read_bosh, HTTPBIND),
    "stored": (lambda e: serialize(e).encode(), parse_element, ""),
}


def round_trip(element: Element, context: str) -> tuple[tuple, tuple, bytes]:
    """(expected, read back, the bytes) for ``element`` written in ``context``."""
    write, read, default = CONTEXTS[context]
    data = write(element)
    return canonical(element, default), canonical(read(data), default), data


# -- strategies ----------------------------------------------------------------------------------------


#: Characters XML 1.0 cannot carry at all (the parser refuses them; text never holds them).
NOT_XML = "".join(chr(code) for code in range(0x20) if chr(code) not in "\t\n\r") + "\ufffe\uffff"
#: Markup, quoting, references, whitespace XML normalises, and things that look like the attack.
HOSTILE = ["]]>", "<", ">", "&", "&amp;", "&#9;", "&lt;", "'", '"', "\r", "\r\n", "\t", "\n", " ", "<!--",
           "<![CDATA[", "</message>", "<message from='boss@example.com'>", "'/><x a='", '"/><x a="', "\x85",
           "\u2028", "\U0001f600", "\ufffd", "xmlns='z'", "\x7f"]
xml_chars = st.characters(exclude_categories=("Cs",), exclude_characters=NOT_XML)
texts = st.lists(st.one_of(st.sampled_from(HOSTILE), st.text(xml_chars, max_size=3)), max_size=3).map("".join)

# Names both XML editions accept (expat applies the fourth's tables), with the reserved-looking ones.
NAME_START = "abcxyzABXYZ_\u00e9\u0436\u4e2d\u03a9"
NAME_REST = NAME_START + "0189-.\u00b7"
_made_names = st.builds(lambda first, rest: first + rest, st.sampled_from(NAME_START), st.text(NAME_REST, max_size=5))
prefixes = st.one_of(st.sampled_from(["stream", "xn0", "xn1", "xmlfoo", "p"]), _made_names)
attribute_names = st.one_of(st.sampled_from(["to", "from", "xml", "xmlfoo", "xn0", "stream"]), _made_names)
names = st.one_of(st.sampled_from(["message", "body", "x", "xmlns", "xml", "stream", "error", "xn0"]), _made_names)

NS_CHARS = "abz019:/.#%?=-_~[]@!$()*+,;\u00e9\u4e2d"
bindable = st.one_of(st.sampled_from([ns.CLIENT, ns.STREAMS, HTTPBIND, "urn:a", "urn:b"]),
                     st.text(NS_CHARS, min_size=1, max_size=8))
namespaces = st.one_of(st.sampled_from(["", XML_NS]), bindable)

#: Neither names nor namespace names: each must make the serializer refuse the tree.
bad_names = st.one_of(
    st.sampled_from(["", "1a", "-a", ".a", "a:b", "a b", "a\tb", "a>b", "a'b", 'a"b', "a=b", "a/b", "a&b",
                     "\U00010000", "message from='boss@example.com'", "a\x00"]),
    st.builds(lambda a, bad, b: a + bad + b, names, st.sampled_from(list("<>&'\"=/ \t\n:;!?")), names))
bad_namespaces = st.builds(lambda a, bad, b: a + bad + b, st.text(NS_CHARS, max_size=4),
                           st.sampled_from(list("'\"<>&\t\n\r \x00\x7f\x85\\^`{|}") + ["\ufffe"]),
                           st.text(NS_CHARS, max_size=4))
bad_values = st.builds(lambda a, bad, b: a + bad + b, texts, st.sampled_from(["\x00", "\x01", "\x0b", "\x1f"]),
                       texts)
_attribute_keys = st.one_of(attribute_names, st.tuples(st.one_of(bindable, st.just(XML_NS)), attribute_names))
_declarations = st.one_of(st.just({}), st.dictionaries(prefixes, bindable, max_size=2), st.just({"xml": XML_NS}))


@st.composite
def trees(draw: Callable, depth: int = 0) -> Element:
    """A domish tree: URIs given or inherited, own default namespaces, prefix declarations, plain,
    ``xml:`` and other qualified attributes, mixed content."""
    uri = draw(st.one_of(st.none(), namespaces))
    element = Element((uri, draw(names)))
    element.defaultUri = draw(st.one_of(st.none(), st.just(uri), namespaces))
    element.localPrefixes = dict(draw(_declarations))  # a copy: spoiled_trees() changes it
    element.attributes = draw(st.dictionaries(_attribute_keys, texts, max_size=3))
    if depth < 2:
        element.children.extend(draw(st.lists(st.one_of(texts, trees(depth + 1)), max_size=3)))
    return element


def elements_of(element: Element) -> list[Element]:
    found = [element]
    for child in element.elements():
        found += elements_of(child)
    return found


@st.composite
def spoiled_trees(draw: Callable) -> Element:
    """A tree with exactly one thing no XML can say: a bad element name, attribute name, attribute value,
    element namespace, prefix declaration or attribute namespace."""
    tree = draw(trees())
    victim = draw(st.sampled_from(elements_of(tree)))
    how = draw(st.sampled_from(["name", "attribute name", "xmlns attribute", "value", "namespace",
                                "declared namespace", "declared prefix", "attribute namespace"]))
    if how == "name":
        victim.name = draw(bad_names)
    elif how == "attribute name":
        victim.attributes[draw(bad_names)] = "v"
    elif how == "xmlns attribute":
        victim.attributes["xmlns"] = draw(namespaces)
    elif how == "value":
        victim.attributes[draw(attribute_names)] = draw(bad_values)
    elif how == "namespace":
        victim.uri = draw(bad_namespaces)
    elif how == "declared namespace":
        victim.localPrefixes[draw(prefixes)] = draw(bad_namespaces)
    elif how == "declared prefix":
        victim.localPrefixes[draw(st.one_of(bad_names, st.just("xmlns")))] = "urn:ok"
    else:
        victim.attributes[(draw(bad_namespaces), "a")] = "v"
    return tree
