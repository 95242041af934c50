"""smcroute.unprivileged.config: the smcroute.conf parser (SPEC section 2)."""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from smcroute.unprivileged.config import MAX_OIFS, parse_address, parse_text, read_config, tokenize
from smcroute.unprivileged.model import (
    Config,
    Diagnostic,
    Mgroup,
    Mroute,
    Phyint,
    Prefix,
    Where,
)

FILE = "/etc/test.conf"


def parse(text: str) -> Config:
    config = parse_text(text, FILE)
    assert isinstance(config, Config)
    for d in config.diagnostics:
        assert isinstance(d, Diagnostic)
        assert d.where is not None and d.where.file == FILE
    return config


def only(text: str) -> Phyint | Mroute | Mgroup:
    """The one directive of a clean one-line config."""
    config = parse(text)
    assert config.diagnostics == (), [str(d) for d in config.diagnostics]
    assert len(config.directives) == 1
    return config.directives[0]


def one_diag(text: str, *, error: bool, line: int = 1) -> Diagnostic:
    config = parse(text)
    assert len(config.diagnostics) == 1, [str(d) for d in config.diagnostics]
    d = config.diagnostics[0]
    assert d.error is error, str(d)
    assert d.where == Where(FILE, line)
    return d


def v4(text: str) -> Prefix:
    return Prefix(ipaddress.IPv4Address(text), 32)


def v6(text: str) -> Prefix:
    return Prefix(ipaddress.IPv6Address(text), 128)


ROUTE = "mroute from a1 source 10.0.0.1 group 225.1.2.3 to a2 a3"
EXPECTED_ROUTE = Mroute(Where(FILE, 1), "a1", v4("10.0.0.1"), v4("225.1.2.3"), ("a2", "a3"))


# -- lexing -------------------------------------------------------------------------------


def test_tokenize() -> None:
    assert tokenize("") == []
    assert tokenize("  a\tb\rc\vd\fe  ") == ["a", "b", "c", "d", "e"]
    assert tokenize("a #b c") == ["a"]
    assert tokenize("# a") == []
    assert tokenize("a#b c") == ["a#b", "c"]
    assert tokenize("a\u00a0b") == ["a\u00a0b"]  # only C isspace separates


@pytest.mark.parametrize(("line", "tokens"), [
    # only C isspace separates: not the \x1c-\x1f separators that str.split() knows
    ("a\x1cb c\x1dd", ["a\x1cb", "c\x1dd"]),
    ("a\x1eb\x1f", ["a\x1eb\x1f"]),
    ("\x1c", ["\x1c"]),
    ("a\x85b \u2028 c\u3000d", ["a\x85b", "\u2028", "c\u3000d"]),
    ("é\tb\x1cc", ["é", "b\x1cc"]),  # non-ASCII: the slow path, same rules
    ("é\x0bb\x0cc\rd", ["é", "b", "c", "d"]),
    ("é #x y", ["é"]),
    ("\x1c #x", ["\x1c"]),
    ("a\x1c#b c", ["a\x1c#b", "c"]),  # "#" inside a token is literal
    ("\x1c#b c", ["\x1c#b", "c"]),
    ("#", []),
    ("a ##", ["a"]),
])
def test_tokenize_c_isspace(line: str, tokens: list[str]) -> None:
    assert tokenize(line) == tokens


def test_python_only_separators_do_not_split_a_line() -> None:
    # "phyint\x1ca1" is one word, which matches "phyint" by prefix
    d = one_diag("phyint\x1ca1", error=True)
    assert d.message == "phyint missing interface pattern"
    assert only("phyint\x1ca1 a2") == Phyint(Where(FILE, 1), "a2", None)
    # and "a1\x1c" is not the interface a1 but an invalid name
    assert "invalid interface name" in one_diag("phyint a1\x1c", error=True).message


def reference_tokenize(line: str) -> list[str]:
    tokens = [t for t in re.split("[ \t\r\v\f]+", line) if t]
    for i, token in enumerate(tokens):
        if token.startswith("#"):
            return tokens[:i]
    return tokens


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=" \t\r\v\f\x1c\x1d\x1e\x1f\x85\xa0\u2028\u3000#ab1é", max_size=30))
def test_property_tokenize(line: str) -> None:
    assert tokenize(line) == reference_tokenize(line)


def test_empty_and_blank() -> None:
    for text in ("", "\n", "\n\n\n", "   \t \n\r\n", "\r", "\f\v"):
        config = parse(text)
        assert config.directives == ()
        assert config.diagnostics == ()


def test_plain_route() -> None:
    assert only(ROUTE) == EXPECTED_ROUTE


def test_whitespace_variants() -> None:
    text = "\t mroute\tfrom  a1\vsource\f10.0.0.1 group 225.1.2.3 \t to a2\ta3 \t"
    assert only(text) == EXPECTED_ROUTE


def test_crlf_file() -> None:
    text = "phyint a1 enable\r\n" + ROUTE + "\r\n"
    config = parse(text)
    assert config.diagnostics == ()
    assert config.directives == (
        Phyint(Where(FILE, 1), "a1", True),
        Mroute(Where(FILE, 2), "a1", v4("10.0.0.1"), v4("225.1.2.3"), ("a2", "a3")),
    )


def test_last_line_without_newline() -> None:
    config = parse("phyint a1\nphyint a2")
    assert [d.pattern for d in config.directives] == ["a1", "a2"]  # type: ignore[union-attr]
    assert config.directives[1].where == Where(FILE, 2)


@pytest.mark.parametrize("text", [
    "# comment",
    "#",
    "   # indented comment",
    "#phyint a1",
    "\t#mroute from a1 source 10.0.0.1 group 225.1.2.3",
])
def test_comment_lines(text: str) -> None:
    config = parse(text)
    assert config.directives == () and config.diagnostics == ()


def test_comment_ends_the_line() -> None:
    assert only("phyint a1 # disable") == Phyint(Where(FILE, 1), "a1", None)
    assert only("phyint a1 #disable") == Phyint(Where(FILE, 1), "a1", None)


def test_comment_after_oif_list_is_a_comment() -> None:
    # SMCRoute takes "#" and "x" as interface names here; we deliberately do not.
    assert only(ROUTE + " # x y") == EXPECTED_ROUTE
    assert only(ROUTE + " #x") == EXPECTED_ROUTE
    assert only("mroute from a1 source 10.0.0.1 group 225.1.2.3 to # a2").oifs == ()


def test_hash_inside_a_token_is_literal() -> None:
    assert only("phyint a1#x") == Phyint(Where(FILE, 1), "a1#x", None)


# -- directives and keyword prefix matching --------------------------------------------------


def test_keyword_prefix_matching() -> None:
    text = "mroutefoo fromage a1 sourcex 10.0.0.1 groups 225.1.2.3 tofu a2 a3"
    route = parse(text).directives
    assert route == (EXPECTED_ROUTE,)
    assert only("phyintX a1 enabled").enable is True  # type: ignore[union-attr]
    assert only("phyint a1 disabled").enable is False  # type: ignore[union-attr]
    assert only("phyint a1 mrdiscovery").mrdisc is True  # type: ignore[union-attr]


@pytest.mark.parametrize("text", [
    "mroute group 225.1.2.3 from a1 source 10.0.0.1 to a2 a3",
    "mroute source 10.0.0.1 group 225.1.2.3 from a1 to a2 a3",
    "mroute group 225.1.2.3 source 10.0.0.1 from a1 to a2 a3",
])
def test_free_keyword_order(text: str) -> None:
    assert only(text) == EXPECTED_ROUTE


def test_to_swallows_the_rest() -> None:
    route = only("mroute from a1 source 10.0.0.1 group 225.1.2.3 to a2 group a3 from b1")
    assert route == Mroute(Where(FILE, 1), "a1", v4("10.0.0.1"), v4("225.1.2.3"),
                           ("a2", "group", "a3", "from", "b1"))


def test_to_first_leaves_nothing_for_from() -> None:
    d = one_diag("mroute to a2 from a1 source 10.0.0.1 group 225.1.2.3", error=True)
    assert "from" in d.message or "inbound" in d.message


def test_route_without_oifs() -> None:
    assert only("mroute from a1 source 10.0.0.1 group 225.1.2.3").oifs == ()  # type: ignore
    assert only("mroute from a1 source 10.0.0.1 group 225.1.2.3 to").oifs == ()  # type: ignore


def test_later_value_overrides() -> None:
    route = only("mroute from a9 from a1 source 10.0.0.9 source 10.0.0.1 group 225.1.2.3"
                 " to a2 a3")
    assert route == EXPECTED_ROUTE


def test_unknown_words_are_ignored() -> None:
    # SPEC 2.2: unknown tokens are silently ignored; "-F" counts every
    # warning as an error, so they must not produce a diagnostic either.
    config = parse("mroute from a1 junk source 10.0.0.1 group 225.1.2.3 extra to a2 a3")
    assert config.directives == (EXPECTED_ROUTE,)
    assert config.errors == ()
    assert config.diagnostics == ()


@pytest.mark.parametrize("word", ["bogus", "route", "mrout", "phy", "from", "#", "ENABLE",
                                  "Mroute", "PHYINT"])
def test_unknown_directive_is_an_error(word: str) -> None:
    text = f"{word} a1 enable" if word != "#" else "x# a1"
    d = one_diag(text, error=True)
    assert "Unknown command" in d.message
    assert parse(text).directives == ()


def test_include_without_pattern_is_an_error() -> None:
    for text in ("include", "include   ", "include # a.conf", "includes"):
        d = one_diag(text, error=True)
        assert d.message == "include: missing file pattern"
        assert parse(text).directives == ()


def test_include_without_a_match_is_nothing() -> None:
    config = parse("include /nonexistent-smcroute-test/*.conf\ninclude /nonexistent-x.conf")
    assert config == Config()


# -- phyint ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("phyint a1", Phyint(Where(FILE, 1), "a1", None, False, None)),
    ("phyint a1 enable", Phyint(Where(FILE, 1), "a1", True, False, None)),
    ("phyint a1 disable", Phyint(Where(FILE, 1), "a1", False, False, None)),
    ("phyint a1 mrdisc", Phyint(Where(FILE, 1), "a1", None, True, None)),
    ("phyint a1 enable mrdisc", Phyint(Where(FILE, 1), "a1", True, True, None)),
    ("phyint a1 mrdisc enable", Phyint(Where(FILE, 1), "a1", True, True, None)),
    ("phyint a1 ttl-threshold 1", Phyint(Where(FILE, 1), "a1", None, False, 1)),
    ("phyint a1 ttl-threshold 255", Phyint(Where(FILE, 1), "a1", None, False, 255)),
    ("phyint a1 enable ttl-threshold 64 mrdisc",
     Phyint(Where(FILE, 1), "a1", True, True, 64)),
    ("phyint a1 ttl-threshold 7 disable", Phyint(Where(FILE, 1), "a1", False, False, 7)),
    ("phyint eth+ enable", Phyint(Where(FILE, 1), "eth+", True, False, None)),
    ("phyint eth0:1", Phyint(Where(FILE, 1), "eth0:1", None, False, None)),
    ("phyint abcdefghijklmno", Phyint(Where(FILE, 1), "abcdefghijklmno", None, False, None)),
])
def test_phyint(text: str, expected: Phyint) -> None:
    assert only(text) == expected


def test_phyint_last_of_enable_disable_wins() -> None:
    assert only("phyint a1 enable disable").enable is False  # type: ignore[union-attr]
    assert only("phyint a1 disable enable").enable is True  # type: ignore[union-attr]


@pytest.mark.parametrize("text", ["phyint", "phyint   ", "phyint # a1", "phyint\t#"])
def test_phyint_missing_name(text: str) -> None:
    d = one_diag(text, error=True)
    assert "phyint missing interface pattern" in d.message
    assert parse(text).directives == ()


@pytest.mark.parametrize("value", ["0", "256", "-1", "1000", "abc", "0x10", "٣", "²", "1.5",
                                   "99999999999999999999"])
def test_phyint_ttl_threshold_out_of_range(value: str) -> None:
    text = f"phyint a1 enable ttl-threshold {value}"
    d = one_diag(text, error=True)
    assert "out of range (1-255)" in d.message
    assert f"phyint a1 ttl {value}" in d.message
    assert parse(text).directives == ()  # an error: the line is skipped


@pytest.mark.parametrize("name", ["a" * 16, "a" * 15 + "+", "b" * 40])
def test_phyint_name_too_long(name: str) -> None:
    d = one_diag(f"phyint {name}", error=True)
    assert "too long" in d.message
    assert parse(f"phyint {name}").directives == ()


# -- mroute ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "source", "group"), [
    ("source 10.0.0.1 group 225.1.2.3", v4("10.0.0.1"), v4("225.1.2.3")),
    ("source 10.0.0.1/32 group 225.1.2.3/32", v4("10.0.0.1"), v4("225.1.2.3")),
    ("source 10.0.0.1/0 group 225.1.2.3/0", v4("10.0.0.1"), v4("225.1.2.3")),
    ("source 10.0.0.1/00 group 225.1.2.3", v4("10.0.0.1"), v4("225.1.2.3")),
    ("source 192.168.1.1 group 224.0.0.0", v4("192.168.1.1"), v4("224.0.0.0")),
    ("source 192.168.1.1 group 239.255.255.255", v4("192.168.1.1"), v4("239.255.255.255")),
    ("source 2001:db8::1 group ff2e::42", v6("2001:db8::1"), v6("ff2e::42")),
    ("source fe80::1 group ff02::1/128", v6("fe80::1"), v6("ff02::1")),
    ("source 2001:db8::1/0 group ff05::1/0", v6("2001:db8::1"), v6("ff05::1")),
    ("source ::ffff:10.0.0.1 group ff05::1", v6("::ffff:10.0.0.1"), v6("ff05::1")),
])
def test_source_specific_routes(text: str, source: Prefix, group: Prefix) -> None:
    route = only(f"mroute from a1 {text} to a2")
    assert isinstance(route, Mroute)
    assert route == Mroute(Where(FILE, 1), "a1", source, group, ("a2",))
    assert route.is_ssm
    assert route.family == group.family


@pytest.mark.parametrize("text", [
    "source 10.0.0.1/33 group 225.1.2.3",
    "source 10.0.0.1 group 225.1.2.3/33",
    "source 2001:db8::1/129 group ff05::1",
    "source 2001:db8::1 group ff05::1/129",
    "source 10.0.0.1/ group 225.1.2.3",
    "source 10.0.0.1/x group 225.1.2.3",
    "source 10.0.0.1/-1 group 225.1.2.3",
    "source 10.0.0.1/+8 group 225.1.2.3",
    "source 10.0.0.1 group 225.1.2.3/3x",
    "source 10.0.0.1/٣٢ group 225.1.2.3",
    "source 10.0.0.1/32/32 group 225.1.2.3",
])
def test_invalid_prefix_length_is_an_error_and_skipped(text: str) -> None:
    line = f"mroute from a1 {text} to a2"
    one_diag(line, error=True)
    assert parse(line).directives == ()


@pytest.mark.parametrize("text", [
    "source 10.0.0.256 group 225.1.2.3",
    "source 10.0.0 group 225.1.2.3",
    "source foo group 225.1.2.3",
    "source 010.0.0.1 group 225.1.2.3",
    "source 10.0.0.1 group 225.1.2",
    "source 10.0.0.1 group foo",
    "source 10.0.0.1 group 225.1.2.3.4",
    "source fe80::1%eth0 group ff02::1",
    "source 2001:db8::1 group ff02::1%1",
    "source 2001:db8:::1 group ff02::1",
])
def test_invalid_address_is_an_error_and_skipped(text: str) -> None:
    line = f"mroute from a1 {text} to a2"
    d = one_diag(line, error=True)
    assert "nvalid" in d.message
    assert parse(line).directives == ()


@pytest.mark.parametrize("group", ["10.1.2.3", "223.255.255.255", "240.0.0.1",
                                   "255.255.255.255", "0.0.0.0", "::ffff:225.1.2.3"])
def test_non_multicast_group_is_an_error_and_skipped(group: str) -> None:
    source = "2001:db8::1" if ":" in group else "10.0.0.1"
    line = f"mroute from a1 source {source} group {group} to a2"
    d = one_diag(line, error=True)
    assert "Invalid multicast group" in d.message
    assert parse(line).directives == ()


@pytest.mark.parametrize(("source", "group"), [
    ("10.0.0.1", "ff05::1"),
    ("2001:db8::1", "225.1.2.3"),
    ("::ffff:10.0.0.1", "225.1.2.3"),
    ("::", "225.1.2.3"),
    ("0.0.0.0", "ff05::1"),
])
def test_mixed_families_are_warned_and_skipped(source: str, group: str) -> None:
    line = f"mroute from a1 source {source} group {group} to a2"
    d = one_diag(line, error=True)
    assert "famil" in d.message
    assert parse(line).directives == ()


@pytest.mark.parametrize("text", [
    "mroute",
    "mroute source 10.0.0.1 group 225.1.2.3 to a2",  # no from
    "mroute from a1 source 10.0.0.1 to a2",  # no group
    "mroute from a1 source 10.0.0.1 to a2 group 225.1.2.3",  # group swallowed by to
    "mroute from a1 source 10.0.0.1 group",  # keyword without value
    "mroute source 10.0.0.1 group 225.1.2.3 from",
])
def test_missing_from_or_group_is_an_error(text: str) -> None:
    one_diag(text, error=True)
    assert parse(text).directives == ()


def pfx(text: str) -> Prefix:
    net = ipaddress.ip_interface(text)
    return Prefix(net.ip, net.network.prefixlen)


@pytest.mark.parametrize(("text", "source", "group"), [
    ("group 225.1.2.3", None, v4("225.1.2.3")),  # (*,G)
    ("source 0.0.0.0 group 225.1.2.3", None, v4("225.1.2.3")),  # any source is (*,G)
    ("source 0.0.0.0/32 group 225.1.2.3", None, v4("225.1.2.3")),
    ("source 0.0.0.0/8 group 225.1.2.3", None, v4("225.1.2.3")),
    ("source :: group ff05::1", None, v6("ff05::1")),
    ("source ::/128 group ff05::1", None, v6("ff05::1")),
    ("group ff05::1", None, v6("ff05::1")),
    ("group FF05::1", None, v6("ff05::1")),
    ("source 10.0.0.1 group 225.1.2.0/24", v4("10.0.0.1"), pfx("225.1.2.0/24")),  # (S,G/LEN)
    ("source 10.0.0.0/8 group 225.1.2.3", pfx("10.0.0.0/8"), v4("225.1.2.3")),  # (S/LEN,G)
    ("source 10.0.0.0/8 group 225.1.2.0/24", pfx("10.0.0.0/8"), pfx("225.1.2.0/24")),
    ("group 225.1.2.0/24", None, pfx("225.1.2.0/24")),
    ("group 225.1.2.0/0", None, v4("225.1.2.0")),  # /0 is the full length, not "all"
    ("source 2001:db8::/32 group ff05::1", pfx("2001:db8::/32"), v6("ff05::1")),
    ("source 2001:db8::1 group ff05::/16", v6("2001:db8::1"), pfx("ff05::/16")),
    ("group ff00::/8", None, pfx("ff00::/8")),
    ("group 224.0.0.0/4", None, pfx("224.0.0.0/4")),
    ("group 225.1.2.3/1", None, pfx("225.1.2.3/1")),
])
def test_star_g_and_range_templates(text: str, source: Prefix | None, group: Prefix) -> None:
    route = only(f"mroute from a1 {text} to a2")
    assert route == Mroute(Where(FILE, 1), "a1", source, group, ("a2",))
    assert isinstance(route, Mroute)
    assert not route.is_ssm
    assert route.family == group.family


def test_template_keeps_the_address_as_written() -> None:
    # SPEC 2.6.4: ranges are not expanded and keep the user's host bits
    route = only("mroute from a1 source 10.1.2.3/8 group 225.1.2.3/29 to a2")
    assert isinstance(route, Mroute)
    assert route.group == Prefix(ipaddress.IPv4Address("225.1.2.3"), 29)
    assert str(route.group) == "225.1.2.3/29"
    assert str(route.source) == "10.1.2.3/8"
    assert str(only("mroute from a1 group 225.1.2.3").group) == "225.1.2.3"  # type: ignore


def test_templates_without_oifs_and_with_wildcards() -> None:
    assert only("mroute from a1 group 225.1.2.3") == Mroute(
        Where(FILE, 1), "a1", None, v4("225.1.2.3"), ())
    assert only("mroute from eth+ group ff05::1 to a+ b1") == Mroute(
        Where(FILE, 1), "eth+", None, v6("ff05::1"), ("a+", "b1"))


@pytest.mark.parametrize(("text", "ssm"), [
    ("source 10.0.0.1 group 225.1.2.3", True),
    ("source 10.0.0.1/32 group 225.1.2.3/32", True),
    ("source 10.0.0.1/0 group 225.1.2.3/0", True),
    ("source 10.0.0.1/31 group 225.1.2.3", False),
    ("source 10.0.0.1 group 225.1.2.3/31", False),
    ("group 225.1.2.3", False),
    ("source 2001:db8::1/128 group ff05::1/128", True),
    ("source 2001:db8::1/127 group ff05::1", False),
])
def test_is_ssm_classification(text: str, ssm: bool) -> None:
    route = only(f"mroute from a1 {text} to a2")
    assert isinstance(route, Mroute)
    assert route.is_ssm is ssm


# -- mgroup / ssmgroup (SPEC 2.5) ---------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("mgroup from a1 group 225.1.2.3", Mgroup(Where(FILE, 1), "a1", None, v4("225.1.2.3"))),
    ("mgroup from a1 source 10.0.0.1 group 225.1.2.3",
     Mgroup(Where(FILE, 1), "a1", v4("10.0.0.1"), v4("225.1.2.3"))),
    ("ssmgroup from a1 source 10.0.0.1 group 225.1.2.3",
     Mgroup(Where(FILE, 1), "a1", v4("10.0.0.1"), v4("225.1.2.3"))),
    ("ssmgroup from a1 group 225.1.2.3", Mgroup(Where(FILE, 1), "a1", None, v4("225.1.2.3"))),
    ("mgroupx from a1 group 225.1.2.3", Mgroup(Where(FILE, 1), "a1", None, v4("225.1.2.3"))),
    ("ssmgroups fromage a1 groups 225.1.2.3",
     Mgroup(Where(FILE, 1), "a1", None, v4("225.1.2.3"))),
    ("mgroup group 225.1.2.3 source 10.0.0.1 from a1",
     Mgroup(Where(FILE, 1), "a1", v4("10.0.0.1"), v4("225.1.2.3"))),
    ("mgroup from a1 source 0.0.0.0 group 225.1.2.3",
     Mgroup(Where(FILE, 1), "a1", None, v4("225.1.2.3"))),
    ("mgroup from a1 source :: group ff05::1", Mgroup(Where(FILE, 1), "a1", None, v6("ff05::1"))),
    ("mgroup from a1 source 2001:db8::1 group ff2e::42",
     Mgroup(Where(FILE, 1), "a1", v6("2001:db8::1"), v6("ff2e::42"))),
    ("mgroup from a1 group ff02::1/128", Mgroup(Where(FILE, 1), "a1", None, v6("ff02::1"))),
    ("mgroup from a1 group 225.1.2.3/0", Mgroup(Where(FILE, 1), "a1", None, v4("225.1.2.3"))),
    ("mgroup from a1 group 225.1.2.0/24",
     Mgroup(Where(FILE, 1), "a1", None, pfx("225.1.2.0/24"))),
    ("mgroup from a1 source 10.0.0.0/8 group 225.1.2.3",
     Mgroup(Where(FILE, 1), "a1", pfx("10.0.0.0/8"), v4("225.1.2.3"))),
    ("mgroup from a1 source 10.0.0.1/0 group 225.1.2.3",
     Mgroup(Where(FILE, 1), "a1", v4("10.0.0.1"), v4("225.1.2.3"))),
    ("mgroup from eth+ group 225.1.2.3", Mgroup(Where(FILE, 1), "eth+", None, v4("225.1.2.3"))),
    ("mgroup from eth0:1 group 225.1.2.3",
     Mgroup(Where(FILE, 1), "eth0:1", None, v4("225.1.2.3"))),
    ("mgroup from a1 junk group 225.1.2.3 extra",
     Mgroup(Where(FILE, 1), "a1", None, v4("225.1.2.3"))),
    ("mgroup from a1 group 225.1.2.3 # source 10.0.0.1",
     Mgroup(Where(FILE, 1), "a1", None, v4("225.1.2.3"))),
    ("mgroup from a9 from a1 group 225.9.9.9 group 225.1.2.3",  # later values override
     Mgroup(Where(FILE, 1), "a1", None, v4("225.1.2.3"))),
])
def test_mgroup(text: str, expected: Mgroup) -> None:
    group = only(text)
    assert group == expected
    assert isinstance(group, Mgroup)
    assert group.family == expected.group.family


@pytest.mark.parametrize("text", [
    "mgroup",
    "ssmgroup",
    "mgroup group 225.1.2.3",  # no from
    "mgroup source 10.0.0.1 group 225.1.2.3",
    "mgroup from a1",  # no group
    "mgroup from a1 source 10.0.0.1",
    "mgroup from a1 group",  # keyword without value
    "mgroup from a1 group 225.1.2.3 source",
    "mgroup group 225.1.2.3 from",
    "mgroup to a2 from a1 group 225.1.2.3",  # everything after "to" is swallowed
    "mgroup from abcdefghijklmnop group 225.1.2.3",  # name too long
])
def test_mgroup_missing_from_or_group_is_an_error(text: str) -> None:
    one_diag(text, error=True)
    assert parse(text).directives == ()


@pytest.mark.parametrize(("text", "words"), [
    ("group 10.0.0.1", "Invalid multicast group"),
    ("group 0.0.0.0", "Invalid multicast group"),
    ("group ::ffff:225.1.2.3", "Invalid multicast group"),
    ("group 2001:db8::1", "Invalid multicast group"),
    ("group 225.1.2", "nvalid"),
    ("group foo", "nvalid"),
    ("group 225.1.2.03", "nvalid"),
    ("group ff02::1%eth0", "nvalid"),
    ("group 225.1.2.3/33", "prefix length"),
    ("group ff05::1/129", "prefix length"),
    ("group 225.1.2.3/x", "prefix length"),
    ("group 225.1.2.3/-1", "prefix length"),
    ("source 10.0.0.1/33 group 225.1.2.3", "prefix length"),
    ("source 2001:db8::1/129 group ff05::1", "prefix length"),
    ("source 10.0.0.256 group 225.1.2.3", "nvalid"),
    ("source 1.2.3.04 group 225.1.2.3", "nvalid"),
    ("source 225.0.0.1 group 225.1.2.3", "nvalid"),  # multicast source
    ("source ff05::9 group ff05::1", "nvalid"),
    ("source 255.255.255.255 group 225.1.2.3", "nvalid"),  # broadcast source
    ("source 10.0.0.1 group ff05::1", "famil"),
    ("source 2001:db8::1 group 225.1.2.3", "famil"),
    ("source :: group 225.1.2.3", "famil"),
    ("source 0.0.0.0 group ff05::1", "famil"),
])
def test_mgroup_bad_address_is_an_error_and_skipped(text: str, words: str) -> None:
    line = f"mgroup from a1 {text}"
    d = one_diag(line, error=True)
    assert words in d.message
    assert d.message.startswith("mgroup: ")
    assert parse(line).directives == ()
    # ssmgroup is the same directive, with the same rules
    assert parse("ss" + line).diagnostics == (d,)


def test_mgroup_lines_are_plain_directives() -> None:
    # no "not supported" diagnostic any more: joins are the engine's business
    config = parse("mgroup from a1 group 225.1.2.3\nssmgroup from a2 source 10.0.0.1"
                   " group 225.1.2.4")
    assert config.diagnostics == ()
    assert [type(d) for d in config.directives] == [Mgroup, Mgroup]
    assert [d.where.line for d in config.directives] == [1, 2]


# -- outbound interface cap (SPEC 13.1) -----------------------------------------------------------


def oif_words(n: int) -> str:
    return " ".join(f"x{i}" for i in range(n))


def test_at_most_32_outbound_interfaces() -> None:
    assert MAX_OIFS == 32
    route = only(f"mroute from a1 source 10.0.0.1 group 225.1.2.3 to {oif_words(32)}")
    assert len(route.oifs) == 32  # type: ignore[union-attr]
    # a comment after the list is not counted
    route = only(f"mroute from a1 group 225.1.2.3 to {oif_words(32)} # x y z")
    assert len(route.oifs) == 32  # type: ignore[union-attr]


@pytest.mark.parametrize(("rule", "n"), [
    ("source 10.0.0.1 group 225.1.2.3", 33),
    ("group 225.1.2.3", 33),  # templates too
    ("source 2001:db8::1 group ff05::1", 40),
    ("source 10.0.0.1 group 225.1.2.3", 100),
])
def test_more_than_32_outbound_interfaces_is_an_error(rule: str, n: int) -> None:
    d = one_diag(f"mroute from a1 {rule} to {oif_words(n)}", error=True)
    assert "at most 32" in d.message
    assert str(n) in d.message
    assert parse(f"mroute from a1 {rule} to {oif_words(n)}").directives == ()


def test_oif_cap_counts_words_not_interfaces() -> None:
    # 33 words naming the same interface (or wildcards) are still 33 words
    d = one_diag("mroute from a1 group 225.1.2.3 to " + " ".join(["a+"] * 33), error=True)
    assert "at most 32" in d.message


# -- addresses: inet_pton(3) semantics (SPEC 13.3) ------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("10.0.0.1", "10.0.0.1"),
    ("0.0.0.0", "0.0.0.0"),
    ("255.255.255.255", "255.255.255.255"),
    ("225.1.2.3", "225.1.2.3"),
    ("::", "::"),
    ("::1", "::1"),
    ("ff05::1", "ff05::1"),
    ("FF05::1", "ff05::1"),
    ("2001:DB8:0:0:0:0:0:1", "2001:db8::1"),
    ("::ffff:10.0.0.1", "::ffff:a00:1"),
    ("::1.2.3.4", "::102:304"),
    ("1.2.3.04", None),  # leading zero: inet_pton refuses it
    ("01.2.3.4", None),
    ("1.2.3", None),
    ("1.2.3.4.5", None),
    ("1.2.3.256", None),
    ("0x1.2.3.4", None),
    ("1.2.3.4 ", None),
    (" 1.2.3.4", None),
    ("1.2.3.4\x1c", None),
    ("\u0661.\u0662.\u0663.\u0664", None),  # non-ASCII digits
    ("1.2.3.4\0", None),
    ("", None),
    ("ff02::1%eth0", None),  # no scope ids
    ("fe80::1%1", None),
    ("2001:db8:::1", None),
    ("1:2:3:4:5:6:7:8:9", None),
    ("::ffff:1.2.3.04", None),
    ("g::1", None),
    (":", None),
    ("12345::1", None),
])
def test_parse_address(text: str, expected: str | None) -> None:
    address = parse_address(text)
    if expected is None:
        assert address is None
    else:
        assert address == ipaddress.ip_address(expected)


def test_colon_decides_the_family() -> None:
    # "IPv6 iff the text contains ':'": an IPv4-looking text with a colon is
    # parsed (and refused) as IPv6, never as IPv4 with junk
    assert parse_address("1.2.3.4:") is None
    assert parse_address("::1.2.3.4") == ipaddress.IPv6Address("::1.2.3.4")
    assert isinstance(parse_address("10.0.0.1"), ipaddress.IPv4Address)


@pytest.mark.parametrize("text", [
    "source 1.2.3.04 group 225.1.2.3",
    "source 10.0.0.1 group 225.1.2.03",
    "source 10.0.0.1 group 225.001.2.3",
    "source 10.0.0.1 group ff02::1%eth0",
    "source 10.0.0.1/8%x group 225.1.2.3",
])
def test_inet_pton_rules_in_mroute(text: str) -> None:
    line = f"mroute from a1 {text} to a2"
    d = one_diag(line, error=True)
    assert "nvalid" in d.message
    assert parse(line).directives == ()


@pytest.mark.parametrize("text", [
    "mroute from abcdefghijklmnop source 10.0.0.1 group 225.1.2.3 to a2",
    "mroute from a1 source 10.0.0.1 group 225.1.2.3 to a2 abcdefghijklmnop",
    "mroute from a1 source 10.0.0.1 group 225.1.2.3 to abcdefghijklmno+",
])
def test_mroute_interface_name_too_long(text: str) -> None:
    d = one_diag(text, error=True)
    assert "too long" in d.message
    assert parse(text).directives == ()


def test_interface_names_at_the_limit_and_wildcards() -> None:
    route = only("mroute from abcdefghijklmno source 10.0.0.1 group 225.1.2.3"
                 " to abcdefghijklmn+ eth0:1 +")
    assert route.iif == "abcdefghijklmno"  # type: ignore[union-attr]
    assert route.oifs == ("abcdefghijklmn+", "eth0:1", "+")  # type: ignore[union-attr]


# -- whole-line problems and line numbers -----------------------------------------------------


def test_long_lines() -> None:
    ok = "phyint a1" + " " * (511 - len("phyint a1"))
    assert len(ok) == 511
    assert only(ok) == Phyint(Where(FILE, 1), "a1", None)
    assert only(ok + "\r") == Phyint(Where(FILE, 1), "a1", None)
    too_long = ok + " "
    d = one_diag(too_long, error=True)
    assert "too long" in d.message
    config = parse("phyint a0\n" + "#" + "x" * 600 + "\nphyint a2\n")
    assert [(d.where.line, d.error) for d in config.diagnostics] == [(2, True)]  # type: ignore
    assert [d.where.line for d in config.directives] == [1, 3]


def test_nul_byte() -> None:
    d = one_diag("phyint a1\0", error=True)
    assert "NUL" in d.message
    config = parse("phyint a1\n# \0 even in a comment\nphyint a\0b\nphyint a3")
    assert [(x.where.line, x.error) for x in config.diagnostics] == [(2, True), (3, True)]  # type: ignore
    assert [x.where.line for x in config.directives] == [1, 4]


def test_line_numbers_of_every_diagnostic() -> None:
    text = "\n".join([
        "# comment",  # 1
        "phyint a1 enable",  # 2
        "bogus",  # 3
        "",  # 4
        "phyint",  # 5
        "mroute from a1 group 225.1.2.3",  # 6: (*,G), fine
        "mroute from a1 source 10.0.0.1 group 10.0.0.2",  # 7: unicast group
        "  mroute from a1 source 10.0.0.1 group 225.1.2.3 to a2  ",  # 8: fine
        "mgroup from a1 group 225.1.2.3",  # 9: fine
        "phyint a1 ttl-threshold 0",  # 10
        "\t",  # 11
        "mroute from a1",  # 12
        "mgroup from a1 group 10.0.0.2",  # 13: unicast group
        "ssmgroup group 225.1.2.3",  # 14: no from
        "include",  # 15
        "mroute from a1 group 225.1.2.3 to " + " ".join(["a2"] * 33),  # 16
    ]) + "\n"
    config = parse(text)
    # every problem of a line is an error: the line is skipped (smcroute.conf(5))
    assert [(d.where.line, d.error) for d in config.diagnostics] == [  # type: ignore[union-attr]
        (3, True), (5, True), (7, True), (10, True), (12, True), (13, True), (14, True),
        (15, True), (16, True)]
    assert [d.where.line for d in config.directives] == [2, 6, 8, 9]
    assert [type(d) for d in config.directives] == [Phyint, Mroute, Mroute, Mgroup]
    assert [d for d in config.errors] == [d for d in config.diagnostics if d.error]


def test_diagnostic_text() -> None:
    d = one_diag("bogus", error=True)
    assert str(d) == f"{FILE} line 1: {d.message}"
    assert d.message == "Unknown command bogus, skipping."


# -- read_config ---------------------------------------------------------------------------------


def test_read_config_file(tmp_path: Path) -> None:
    path = tmp_path / "smcroute.conf"
    path.write_bytes(b"phyint a1\r\n" + ROUTE.encode() + b"\n")
    config = read_config(str(path))
    assert config.diagnostics == ()
    assert config.directives[0] == Phyint(Where(str(path), 1), "a1", None)
    assert config.directives[1].where == Where(str(path), 2)


def test_read_config_missing(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.conf")
    config = read_config(path)
    assert config.directives == ()
    assert len(config.diagnostics) == 1
    assert config.diagnostics[0].error
    assert config.diagnostics[0].message == f"Configuration file {path} does not exist"


def test_read_config_directory(tmp_path: Path) -> None:
    config = read_config(str(tmp_path))
    assert config.directives == ()
    assert len(config.diagnostics) == 1
    d = config.diagnostics[0]
    assert d.error
    assert d.message.startswith(f"Failed opening {tmp_path}")


def test_read_config_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.conf"
    path.write_bytes(b"phyint a1\n# caf\xe9\nphyint a2\n")
    config = read_config(str(path))
    assert config.directives == ()
    assert len(config.diagnostics) == 1
    d = config.diagnostics[0]
    assert d.error
    assert d.where == Where(str(path), 2)


# -- properties --------------------------------------------------------------------------------
#
# The text is parsed as the file main.conf of a directory holding files to
# include (good, bad, binary, looping, a subdirectory), so that include lines
# in random text really read something.

INCLUDED = {
    "a.conf": "phyint a1 enable\nmroute from a1 group 225.1.2.3 to a2\n",
    "b.conf": "bogus\nmroute from a1\n\ninclude a.conf\nmgroup from a1 group 10.0.0.1",
    "bad.conf": b"phyint a1\n\xff\n",
    "loop.conf": "include loop.conf\ninclude main.conf\n",
    "sub/c.conf": "include ../*.conf\nphyint\n",
    "sub/d.conf": "include c.conf\n",
}


@pytest.fixture(scope="module")
def include_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("include")
    for name, data in INCLUDED.items():
        path = root / name
        path.parent.mkdir(exist_ok=True)
        if isinstance(data, bytes):
            path.write_bytes(data)
        else:
            path.write_text(data)
    return root


TOKENS = ["mroute", "phyint", "mgroup", "ssmgroup", "include", "from", "source", "group", "to",
          "enable", "disable", "mrdisc", "ttl-threshold", "#", "#x", "a1", "a2", "eth+", "+",
          "eth0:1", "10.0.0.1", "0.0.0.0", "225.1.2.3", "225.1.2.3/24", "1.2.3.4/", "::",
          "ff05::1", "2001:db8::1/129", "fe80::1%lo", "::ffff:1.2.3.4", "0", "1", "255", "256",
          "-1", "/", "\r", "\t", "\v", "\f", "\0", "\x1c", "é", "\u2028", "\x85", "a" * 16,
          "x" * 300, "*.conf", "*", "sub", "sub/*", "a.conf", "b.conf", "bad.conf", "loop.conf",
          "main.conf", "sub/d.conf", "../*"]

line_strategy = st.lists(st.sampled_from(TOKENS), max_size=12).map(" ".join)
include_strategy = st.sampled_from(TOKENS[-12:]).map(lambda pattern: f"include {pattern}")
text_strategy = (st.lists(line_strategy | include_strategy, max_size=6).map("\n".join)
                 | st.text(max_size=300)
                 | st.lists(st.text(alphabet=" \t\r\n#/:.+0123456789abcdefgmoprstu", max_size=40),
                            max_size=8).map("\n".join))


def line_count(data: str | bytes) -> int:
    return (data.count(b"\n") if isinstance(data, bytes) else data.count("\n")) + 1


def check_config(text: str, root: Path) -> None:
    """parse_text never raises, and everything it reports has a file and a line."""
    main = str(root / "main.conf")  # never on disk: the text stands for it
    config = parse_text(text, main)
    assert isinstance(config, Config)
    lines = {main: line_count(text)}
    lines.update({str(root / name): line_count(data) for name, data in INCLUDED.items()})

    def valid_place(file: str, line: int) -> bool:
        real = os.path.realpath(file)
        known = {os.path.realpath(f): n for f, n in lines.items()}
        return real in known and 1 <= line <= known[real]

    for d in config.diagnostics:
        assert isinstance(d, Diagnostic)
        assert isinstance(d.message, str) and d.message
        assert d.where is not None, d
        assert valid_place(d.where.file, d.where.line), d
    for directive in config.directives:
        assert valid_place(directive.where.file, directive.where.line), directive
        if isinstance(directive, Mroute | Mgroup):
            group, source = directive.group, directive.source
            assert group.address.is_multicast
            assert 0 < group.length <= group.max_length
            if source is not None:
                assert source.family == group.family
                assert not source.address.is_unspecified
                assert not source.address.is_multicast
                assert 0 < source.length <= source.max_length
            names = (directive.iif, *directive.oifs) if isinstance(directive, Mroute) else (
                directive.iif,)
            for name in names:
                assert 0 < len(name) < 16
                assert not name.startswith("#")
            if isinstance(directive, Mroute):
                assert len(directive.oifs) <= 32
                assert directive.is_ssm == (source is not None and source.is_host
                                            and group.is_host)
        else:
            assert isinstance(directive, Phyint)
            assert 0 < len(directive.pattern) < 16
            assert directive.threshold is None or 1 <= directive.threshold <= 255


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(text_strategy)
def test_property_never_raises(include_dir: Path, text: str) -> None:
    check_config(text, include_dir)


VALID_CONFIG = [
    "phyint a1 enable ttl-threshold 3",
    "phyint a2 disable",
    "mroute from a1 source 10.0.0.1 group 225.1.2.3 to a2 a3",
    "mroute from a2 source 2001:db8::1 group ff05::1 to a1",
    "mroute from a2 group 225.1.2.0/24 to a1",
    "mgroup from a1 source 10.0.0.1 group 225.1.2.3",
    "include b.conf",
    "# comment",
]


@st.composite
def mutated_config(draw: st.DrawFn) -> str:
    lines = list(draw(st.permutations(VALID_CONFIG)))
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(lines) - 1))
        chars = list(lines[i])
        pos = draw(st.integers(0, len(chars)))
        kind = draw(st.sampled_from(["insert", "delete", "replace", "token"]))
        if kind == "insert":
            chars.insert(pos, draw(st.characters()))
        elif kind == "delete" and pos < len(chars):
            del chars[pos]
        elif kind == "replace" and pos < len(chars):
            chars[pos] = draw(st.sampled_from(list(" \t\r\n#/:.+0\0é*")))
        else:
            chars[pos:pos] = list(" " + draw(st.sampled_from(TOKENS)) + " ")
        lines[i] = "".join(chars)
    return draw(st.sampled_from(["\n", "\r\n"])).join(lines)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(mutated_config())
def test_property_mutated_valid_config(include_dir: Path, text: str) -> None:
    check_config(text, include_dir)


def test_valid_config_is_clean(include_dir: Path) -> None:
    # the starting point of the mutations: clean apart from what b.conf holds
    config = parse_text("\n".join(VALID_CONFIG), str(include_dir / "main.conf"))
    assert {os.path.basename(d.where.file) for d in config.diagnostics  # type: ignore[union-attr]
            } == {"b.conf"}
    own = [d for d in config.directives if d.where.file.endswith("main.conf")]
    assert len(own) == len(VALID_CONFIG) - 2
    assert len(config.directives) == len(own) + 2  # and a.conf through b.conf


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.integers(1, 32), st.integers(1, 32))
def test_prefix_hash_agrees_with_equality(a: int, b: int, la: int, lb: int) -> None:
    p, q = Prefix(ipaddress.IPv4Address(a), la), Prefix(ipaddress.IPv4Address(b), lb)
    assert (p == q) == ((a, la) == (b, lb))
    if p == q:
        assert hash(p) == hash(q)
    assert p == Prefix(ipaddress.IPv4Address(a), la) and hash(p) == hash(
        Prefix(ipaddress.IPv4Address(a), la))
    assert p != Prefix(ipaddress.IPv6Address(a), la)  # same number, other family
