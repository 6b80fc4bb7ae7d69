"""The exception tree: wire codes, round trips through an ERROR message, builtin mix-ins."""

from __future__ import annotations

import pytest

from npusim.services import errors
from npusim.services.errors import (
    BY_CODE,
    ConfigError,
    InvalidDtype,
    InvalidInput,
    InvalidModel,
    NpusimError,
    QueueWaitTimeout,
    ServiceError,
    from_wire,
    to_wire,
)
from npusim.services.protocol import Kind, decode, encode, error_message

pytestmark = pytest.mark.timeout(30)

# The public classes, from the module's own export list: robust against other packages
# (e.g. the client) defining subclasses of NpusimError at run time.
PUBLIC = [obj for name in errors.__all__
          if isinstance(obj := getattr(errors, name), type) and issubclass(obj, NpusimError)]
CLASSES = sorted(BY_CODE.values(), key=lambda c: c.code)


def test_by_code_covers_every_public_class_once() -> None:
    assert len(PUBLIC) >= 22  # the tree in the module docstring
    assert set(BY_CODE.values()) == set(PUBLIC)
    assert all(BY_CODE[c.code] is c for c in PUBLIC)


def test_codes_are_unique() -> None:
    codes = [c.code for c in PUBLIC]
    assert len(codes) == len(set(codes)), sorted(codes)
    # A subclass never inherits its parent's code (which would make BY_CODE lose one of them).
    for cls in PUBLIC:
        assert "code" in vars(cls), f"{cls.__name__} has no code of its own"


@pytest.mark.parametrize("cls", CLASSES, ids=[c.__name__ for c in CLASSES])
def test_round_trip(cls: type[NpusimError]) -> None:
    details = {"device": "npu0", "n": 3, "nested": {"list": [1, 2.5, None, "x"]}}
    exc = cls("something went wrong: ünïcode", details=details)
    body = to_wire(exc)
    assert body == {"code": cls.code, "message": "something went wrong: ünïcode", "details": details}
    back = from_wire(body)
    assert type(back) is cls
    assert back.message == "something went wrong: ünïcode"
    assert str(back) == "something went wrong: ünïcode"
    assert back.details == details


@pytest.mark.parametrize("cls", CLASSES, ids=[c.__name__ for c in CLASSES])
def test_round_trip_over_the_wire(cls: type[NpusimError]) -> None:
    """The real path: a service's ERROR reply, encoded to frames and decoded by the caller."""
    frames = [bytes(memoryview(f)) for f in encode(error_message(17, cls("msg", details={"k": [1, 2]})))]
    msg = decode(frames)
    assert msg.kind is Kind.ERROR and msg.id == 17
    back = from_wire(msg.body)
    assert type(back) is cls
    assert (back.message, back.details) == ("msg", {"k": [1, 2]})
    assert isinstance(back, NpusimError)


def test_round_trip_without_details() -> None:
    back = from_wire(to_wire(InvalidInput("no details")))
    assert type(back) is InvalidInput and back.details == {}
    assert type(from_wire({"code": InvalidInput.code, "message": "m", "details": None})) is InvalidInput
    assert from_wire({"code": InvalidInput.code, "message": "m", "details": "junk"}).details == {}


def test_details_are_copied() -> None:
    d = {"a": 1}
    exc = NpusimError("m", details=d)
    d["a"] = 2
    assert exc.details == {"a": 1}


def test_builtin_mixins() -> None:
    assert issubclass(InvalidInput, ValueError)
    assert issubclass(InvalidDtype, TypeError)
    assert issubclass(InvalidDtype, InvalidInput)
    assert issubclass(InvalidDtype, ValueError)
    assert issubclass(QueueWaitTimeout, TimeoutError)
    assert issubclass(InvalidModel, ValueError)
    assert issubclass(InvalidModel, errors.CompileError)
    assert issubclass(ConfigError, ValueError)
    for cls in PUBLIC:
        assert issubclass(cls, NpusimError)
    # ...and they survive the wire: generic handlers still work on the caller's side.
    with pytest.raises(TypeError):
        raise from_wire(to_wire(InvalidDtype("float16 is not float32")))
    with pytest.raises(ValueError):
        raise from_wire(to_wire(InvalidDtype("float16 is not float32")))
    with pytest.raises(TimeoutError):
        raise from_wire(to_wire(QueueWaitTimeout("waited")))


@pytest.mark.parametrize("body", [
    {"code": 9999, "message": "from a newer version"},
    {"code": 0, "message": "from a newer version"},
    {"code": -3, "message": "from a newer version"},
], ids=["9999", "0", "negative"])
def test_unknown_code_becomes_service_error(body: dict[str, object]) -> None:
    back = from_wire(body)
    assert type(back) is ServiceError
    assert back.message == "from a newer version"


def test_missing_code_becomes_service_error() -> None:
    assert type(from_wire({"message": "m"})) is ServiceError
    assert type(from_wire({})) is ServiceError


def test_foreign_exception_becomes_service_error() -> None:
    body = to_wire(KeyError("model"))
    assert body["code"] == ServiceError.code
    assert body["details"] == {"exception": "KeyError"}
    back = from_wire(body)
    assert type(back) is ServiceError
    assert "KeyError" in back.message and "model" in back.message


def test_foreign_exception_over_the_wire() -> None:
    msg = decode([bytes(memoryview(f)) for f in encode(error_message(3, ZeroDivisionError("division by zero")))])
    back = from_wire(msg.body)
    assert type(back) is ServiceError
    assert "ZeroDivisionError" in back.message
