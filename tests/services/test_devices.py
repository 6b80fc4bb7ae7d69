"""The device-string grammar of ``npusim.services.devices.parse_devices``."""

from __future__ import annotations

import pytest

from npusim.services.devices import DEFAULT_DEVICES, AnyPe, NamedPe, parse_devices
from npusim.services.errors import ConfigError

pytestmark = pytest.mark.timeout(30)

VALID = {
    "warboy(2)*1": [AnyPe(2, 1)],
    "warboy(1)*2": [AnyPe(1, 2)],
    "warboy(1)*1": [AnyPe(1, 1)],
    "warboy*3": [AnyPe(1, 3)],
    "warboy(2)*10": [AnyPe(2, 10)],
    "npu:0:0": [NamedPe(0, "pe0")],
    "npu:0:1": [NamedPe(0, "pe1")],
    "npu:0:0-1": [NamedPe(0, "pe0-1")],
    "npu:1": [NamedPe(1, "pe0-1")],
    "npu:12:1": [NamedPe(12, "pe1")],
    "npu0pe0": [NamedPe(0, "pe0")],
    "npu0pe1": [NamedPe(0, "pe1")],
    "npu0pe0-1": [NamedPe(0, "pe0-1")],
    "npu3": [NamedPe(3, "pe0-1")],
    "npu:0:0,npu:1:0": [NamedPe(0, "pe0"), NamedPe(1, "pe0")],
    "npu0pe0,npu0pe1": [NamedPe(0, "pe0"), NamedPe(0, "pe1")],
    "npu0, npu1": [NamedPe(0, "pe0-1"), NamedPe(1, "pe0-1")],
    " npu:0:1 ": [NamedPe(0, "pe1")],
    # named entries come before implicit ones, each group in its written order
    "warboy*2,npu1pe0": [NamedPe(1, "pe0"), AnyPe(1, 2)],
    "warboy(2)*1,npu:2,warboy(1)*1,npu0pe1": [NamedPe(2, "pe0-1"), NamedPe(0, "pe1"), AnyPe(2, 1), AnyPe(1, 1)],
    "warboy*1,warboy(2)*1": [AnyPe(1, 1), AnyPe(2, 1)],
    # the same device in both notations, on different PEs, is fine
    "npu:0:0,npu0pe1": [NamedPe(0, "pe0"), NamedPe(0, "pe1")],
}


@pytest.mark.parametrize("text,want", VALID.items(), ids=VALID.keys())
def test_parse(text: str, want: list[object]) -> None:
    assert parse_devices(text) == want


def test_default_devices_parse() -> None:
    assert parse_devices(DEFAULT_DEVICES) == [AnyPe(2, 1)]


def test_spec_properties() -> None:
    pe = NamedPe(3, "pe0-1")
    assert (str(pe), pe.device_name) == ("npu3pe0-1", "npu3")
    assert (str(AnyPe(2, 1)), AnyPe(2, 1).pe) == ("warboy(2)*1", "pe0-1")
    assert (str(AnyPe(1, 4)), AnyPe(1, 4).pe) == ("warboy(1)*4", "pe0")
    # str() of a parsed spec parses back to the same spec
    for text in ("npu0pe1", "npu2pe0-1", "warboy(1)*3"):
        (spec,) = parse_devices(text)
        assert parse_devices(str(spec)) == [spec]


INVALID = [
    "",
    " ",
    ",",
    "npu0,",
    ",npu0",
    "npu0,,npu1",
    "warboy",
    "warboy*",
    "*1",
    "warboy()*1",
    "warboy(3)*1",
    "warboy(0)*1",
    "warboy(2)*0",
    "warboy*0",
    "warboy(1)",
    "warboy(2)*-1",
    "npu:0:2",
    "npu:0:1-0",
    "npu:0:0-0",
    "npu:0:1-1",
    "npu:0:0-2",
    "npu:",
    "npu:0:",
    "npu:0:0:0",
    "npu:x",
    "npu0pe2",
    "npu0pe1-0",
    "npu0pe",
    "npu",
    "npu-1",
    "NPU0",
    "tpu0",
    "gpu:0",
    "npu0 pe0",
    "warboy(2)*1;npu0",
    "junk",
    "🙂",
    # overlapping named entries
    "npu0pe0,npu0pe0-1",
    "npu0pe0-1,npu0pe1",
    "npu0,npu0pe1",
    "npu0pe0,npu0pe0",
    "npu:0:1,npu0pe1",
    "npu:1,npu1",
    "npu1pe0,npu2,npu1pe0-1",
]


@pytest.mark.parametrize("text", INVALID, ids=[repr(t) for t in INVALID])
def test_invalid(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_devices(text)


def test_errors_name_the_item_and_the_grammar() -> None:
    with pytest.raises(ConfigError, match="cannot parse device 'junk'.*warboy"):
        parse_devices("npu0,junk")
    with pytest.raises(ConfigError, match="overlapping PEs of npu0"):
        parse_devices("npu0pe0,npu0pe0-1")
    with pytest.raises(ConfigError, match="PEs 0 and 1 only"):
        parse_devices("npu:0:2")
    with pytest.raises(ConfigError, match="only fused PE"):
        parse_devices("npu:0:1-0")
    with pytest.raises(ValueError):  # ConfigError is a ValueError
        parse_devices("warboy(3)*1")
