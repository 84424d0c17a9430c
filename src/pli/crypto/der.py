"""A strict, minimal DER reader (X.690 §10) for the fast paths of :mod:`pli.crypto.smime`.

asn1crypto parses any BER and builds an object per node; opening a 10 KB
message spent more time there than in the RSA decryption it follows. This
reader only splits tag-length-value triples of *distinguished* encodings:
single-byte tags, definite minimal lengths. Anything else (indefinite
lengths from streaming agents, long-form tags, non-minimal lengths) raises
:class:`NotSimpleDer`, and the caller falls back to the full asn1crypto path,
which accepts BER and gives the precise error. So this module never decides
that an input is invalid, only that it is simple enough to be read here.

An element is a plain tuple of offsets into the buffer being read (no copy,
no object per node): ``(tag, start, value_start, stop)``.
"""

from __future__ import annotations

#: Universal tags (X.680 §8.4) as they appear in the identifier octet.
INTEGER = 0x02
OCTET_STRING = 0x04
NULL = 0x05
OID = 0x06
UTC_TIME = 0x17
GENERALIZED_TIME = 0x18
SEQUENCE = 0x30
SET = 0x31

#: ``(tag, start, value_start, stop)``: the element is ``buf[start:stop]``, its
#: content octets ``buf[value_start:stop]``.
Element = tuple[int, int, int, int]


def context(number: int, *, constructed: bool = True) -> int:
    """The identifier octet of ``[number]`` (context-specific class)."""
    return 0x80 | (0x20 if constructed else 0) | number


class NotSimpleDer(ValueError):
    """The input is not in the simple DER form this reader handles."""


def read(buf: bytes, offset: int, end: int) -> Element:
    """The element starting at ``offset``, which must end by ``end``."""
    if offset + 2 > end:
        raise NotSimpleDer("truncated element")
    tag = buf[offset]
    if tag & 0x1F == 0x1F:
        raise NotSimpleDer("multi-byte tag")
    length = buf[offset + 1]
    start = offset + 2
    if length >= 0x80:
        count = length & 0x7F
        # 0x80 is the indefinite form (BER only); more than 4 octets is absurd here.
        if count == 0 or count > 4 or start + count > end or buf[start] == 0:
            raise NotSimpleDer("unreadable length")
        length = int.from_bytes(buf[start : start + count], "big")
        start += count
        # X.690 §10.1: the definite form with the fewest octets.
        if length < 0x80:
            raise NotSimpleDer("non-minimal length")
    stop = start + length
    if stop > end:
        raise NotSimpleDer("truncated element")
    return tag, offset, start, stop


def only(buf: bytes, tag: int, start: int = 0, end: int | None = None) -> Element:
    """The single element that ``buf[start:end]`` holds, with the expected tag."""
    end = len(buf) if end is None else end
    element = read(buf, start, end)
    if element[3] != end or element[0] != tag:
        raise NotSimpleDer("unexpected element")
    return element


def children(buf: bytes, element: Element) -> list[Element]:
    """The elements inside a constructed element, in order."""
    offset, end = element[2], element[3]
    found = []
    while offset < end:
        child = read(buf, offset, end)
        found.append(child)
        offset = child[3]
    return found


def inner(buf: bytes, element: Element, tag: int) -> Element:
    """The single element inside ``element`` (an explicit tag's content)."""
    return only(buf, tag, element[2], element[3])


def expect(items: list[Element], index: int, tag: int) -> Element:
    """``items[index]``, which must exist and carry ``tag``."""
    if index >= len(items) or items[index][0] != tag:
        raise NotSimpleDer("unexpected structure")
    return items[index]


def value(buf: bytes, element: Element) -> bytes:
    return buf[element[2] : element[3]]


def encoded(buf: bytes, element: Element) -> bytes:
    return buf[element[1] : element[3]]


def small_integer(buf: bytes, element: Element) -> int:
    """A version number or similar: a short INTEGER."""
    if element[0] != INTEGER or not 1 <= element[3] - element[2] <= 4:
        raise NotSimpleDer("not a small integer")
    return int.from_bytes(value(buf, element), "big", signed=True)


def integer(buf: bytes, element: Element) -> int:
    if element[0] != INTEGER or element[3] == element[2]:
        raise NotSimpleDer("not an integer")
    return int.from_bytes(value(buf, element), "big", signed=True)


def oid(buf: bytes, element: Element) -> bytes:
    """The content octets of an OBJECT IDENTIFIER, compared as bytes."""
    if element[0] != OID or element[3] == element[2]:
        raise NotSimpleDer("not an object identifier")
    return value(buf, element)


def algorithm(buf: bytes, element: Element) -> tuple[bytes, bytes | None]:
    """An AlgorithmIdentifier: its OID, and its parameters' encoding (or None)."""
    if element[0] != SEQUENCE:
        raise NotSimpleDer("not an algorithm identifier")
    parts = children(buf, element)
    if not 1 <= len(parts) <= 2:
        raise NotSimpleDer("not an algorithm identifier")
    return oid(buf, parts[0]), (encoded(buf, parts[1]) if len(parts) == 2 else None)


def encode_oid(dotted: str) -> bytes:
    """The content octets of an OBJECT IDENTIFIER (X.690 §8.19), for constants."""
    arcs = [int(arc) for arc in dotted.split(".")]
    out = bytearray([arcs[0] * 40 + arcs[1]])
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        rest = arc >> 7
        while rest:
            chunk.append(0x80 | (rest & 0x7F))
            rest >>= 7
        out.extend(reversed(chunk))
    return bytes(out)
