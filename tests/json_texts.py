"""Generated JSON texts for the compiled compactor's tests (tests/unit/test_compact_json.py, and the publish fast
path's in tests/integration/test_hotpath.py): ``json_texts()`` draws a ``JsonText``.

Each is a tree of JSON tokens rendered twice: with random insignificant whitespace between the tokens (``text``)
and with none (``compact``, what ``msgspec.json.format(text, indent=-1)`` returns). Strings mix raw characters,
short escapes and \\uXXXX escapes (surrogate pairs above the BMP); numbers include ones longer than msgspec's
32-character fast path.
"""

import re
from typing import NamedTuple

from hypothesis import strategies as st

WHITESPACE_CHUNKS = st.text(alphabet=" \t\n\r|", max_size=80)
"""Insignificant whitespace for the gaps between tokens, '|' separating one gap from the next."""
LITERALS = ("true", "false", "null")
SHORT_ESCAPES = {'"': '\\"', "\\": "\\\\", "/": "\\/", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r",
                 "\t": "\\t"}
SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def digits(min_size: int, max_size: int):
    return st.text(alphabet="0123456789", min_size=min_size, max_size=max_size)


number_tokens = st.one_of(
    st.builds(
        lambda sign, integer, fraction, exponent: sign + integer + fraction + exponent,
        st.sampled_from(["", "-"]),
        st.one_of(st.just("0"),
                  st.builds(str.__add__, st.sampled_from("123456789"), digits(0, 12)),
                  st.builds(str.__add__, st.sampled_from("123456789"), digits(25, 40))),  # > 32 chars: msgspec's
        st.one_of(st.just(""), digits(1, 12).map(".".__add__)),
        st.one_of(st.just(""), st.builds(lambda e, sign, d: e + sign + d, st.sampled_from("eE"),
                                         st.sampled_from(["", "+", "-"]), digits(1, 4))),
    ),
    st.integers(-(2**70), 2**70).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),  # 1e+16, 1.5e-07, -0.0, ...
)


def u_escape(code: int, upper: bool) -> str:
    digits = f"{code:04x}"
    return "\\u" + (digits.upper() if upper else digits)


STRING_CHARS = st.one_of(st.sampled_from('"\\/\b\f\n\r\t\x00\x01\x1f\x7f e\u00e9\u2028\uffff\U0001F600'),
                        st.characters(codec="utf-8"))  # no lone surrogates: they are not UTF-8


@st.composite
def string_tokens(draw) -> str:
    """A JSON string token: each character raw, or escaped short or as \\uXXXX (a surrogate pair above the BMP)."""
    chars = draw(st.lists(STRING_CHARS, max_size=8))
    how = draw(st.binary(min_size=len(chars), max_size=len(chars)))  # per character: raw, short, \\u; hex case
    out = ['"']
    for ch, choice in zip(chars, how):
        code = ord(ch)
        upper = choice & 4
        if choice % 3 == 0 and ch not in '"\\' and code >= 0x20:
            out.append(ch)
        elif choice % 3 == 1 and ch in SHORT_ESCAPES:
            out.append(SHORT_ESCAPES[ch])
        elif code > 0xFFFF:
            code -= 0x10000
            out.append(u_escape(0xD800 + (code >> 10), upper) + u_escape(0xDC00 + (code & 0x3FF), upper))
        else:
            out.append(u_escape(code, upper))
    out.append('"')
    return "".join(out)


json_trees = st.recursive(
    st.one_of(number_tokens, string_tokens(), st.sampled_from(LITERALS)),
    lambda children: st.one_of(
        st.lists(children, max_size=4).map(lambda items: ("array", items)),
        st.lists(st.tuples(string_tokens(), children), max_size=4).map(lambda items: ("object", items)),
    ),
    max_leaves=12,
)


class JsonText(NamedTuple):
    text: bytes  # with random insignificant whitespace
    compact: bytes  # the same tokens with none
    ordinary: bool  # ASCII, no number over 32 characters (nesting is shallow by construction)


def render(tree, whitespace, numbers: list) -> str:
    if isinstance(tree, str):
        if not tree.startswith('"') and tree not in LITERALS:
            numbers.append(tree)
        return tree
    kind, items = tree
    if kind == "array":
        parts = [render(item, whitespace, numbers) for item in items]
        opening, closing = "[", "]"
    else:
        parts = [key + whitespace() + ":" + whitespace() + render(value, whitespace, numbers)
                 for key, value in items]
        opening, closing = "{", "}"
    body = ",".join(whitespace() + part + whitespace() for part in parts) if parts else whitespace()
    return opening + body + closing


@st.composite
def json_texts(draw) -> JsonText:
    tree = draw(json_trees)
    numbers: list[str] = []
    compact = render(tree, lambda: "", numbers)
    chunks = iter(draw(WHITESPACE_CHUNKS).split("|"))  # one draw for all the gaps: much faster than one each
    text = render(tree, lambda: next(chunks, ""), [])
    text = next(chunks, "") + text + next(chunks, "")
    # Surrogate escapes (\ud800-\udfff, paired or not) are left to msgspec by design.
    ordinary = (compact.isascii() and all(len(number) <= 32 for number in numbers)
                and not SURROGATE_ESCAPE.search(compact.encode()))
    return JsonText(text.encode(), compact.encode(), ordinary)
