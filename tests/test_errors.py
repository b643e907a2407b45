"""Every exception pvtunnel defines lives in `pvtunnel._errors`, under `PvTunnelError`."""

from __future__ import annotations

import ast
import copy
import importlib
import inspect
import pickle
import pkgutil
import re
from pathlib import Path

import pytest

import pvtunnel
from pvtunnel import _errors

PACKAGE = Path(pvtunnel.__file__).parent
ERRORS_MODULE = PACKAGE / "_errors.py"
# A base class that names an exception: `...Error`, `...Exception`, `...Exc`,
# `...Warning`, `...Closed`, `...Rejected` (trio-websocket's names).
EXCEPTION_BASE = re.compile(r"(Error|Exception|Exc|Warning|Closed|Rejected|Cancelled)$")


def _modules() -> list[str]:
    names = [info.name for info in pkgutil.walk_packages(pvtunnel.__path__, prefix="pvtunnel.")]
    return sorted(set(names))


def _exception_classes_by_source() -> list[tuple[Path, int, str]]:
    """``(file, line, class name)`` of every class whose bases look like exceptions."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if not isinstance(node, ast.ClassDef):
                continue
            bases = [ast.unparse(base).rpartition(".")[2] for base in node.bases]
            if any(EXCEPTION_BASE.search(base) for base in bases):
                found.append((path, node.lineno, node.name))
    return found


def test_no_exception_class_is_defined_outside_the_errors_module() -> None:
    outside = [
        f"{path.relative_to(PACKAGE)}:{line} {name}"
        for path, line, name in _exception_classes_by_source()
        if path != ERRORS_MODULE
    ]
    assert not outside


def test_the_source_check_sees_the_errors_module_classes() -> None:
    # Guards the check above: were its pattern to miss every class, it would pass.
    names = {name for path, _, name in _exception_classes_by_source() if path == ERRORS_MODULE}
    defined = {
        name
        for name, value in vars(_errors).items()
        if inspect.isclass(value) and issubclass(value, BaseException)
    }
    assert names == defined


@pytest.mark.parametrize("module_name", _modules())
def test_no_module_defines_an_exception_class_at_run_time(module_name: str) -> None:
    module = importlib.import_module(module_name)
    own = [
        name
        for name, value in vars(module).items()
        if inspect.isclass(value)
        and issubclass(value, BaseException)
        and value.__module__ == module_name
    ]
    assert module_name == "pvtunnel._errors" or not own, own


def test_every_exception_is_a_pvtunnel_error() -> None:
    classes = [
        value
        for value in vars(_errors).values()
        if inspect.isclass(value) and issubclass(value, BaseException)
    ]
    assert len(classes) > 10
    assert all(issubclass(cls, _errors.PvTunnelError) for cls in classes), classes


@pytest.mark.parametrize(
    "name",
    [
        "PvTunnelError",
        "ConfigError",
        "ProtocolError",
        "LocalProtocolError",
        "RemoteProtocolError",
        "TunnelClosedError",
        "UpstreamError",
        "HandshakeRefusedError",
        # Raised by TunnelAgent.serve when the server's certificate does not verify.
        "ServerCertificateError",
    ],
)
def test_what_a_library_user_can_catch_is_public(name: str) -> None:
    assert name in pvtunnel.__all__
    assert getattr(pvtunnel, name) is getattr(_errors, name)


@pytest.mark.parametrize(
    "error",
    [
        pvtunnel.ConfigError(["server.url: first", "routes[0].port: second"]),
        _errors.FieldError("Route", [("port", "expected an integer from 1 to 65535, got 0")]),
        pvtunnel.UpstreamError("connect refused", pvtunnel.ErrorCode.UPSTREAM_CONNECT_FAILED),
        pvtunnel.RemoteProtocolError("bad frame", pvtunnel.ErrorCode.FLOW_CONTROL_ERROR),
        pvtunnel.ServerCertificateError("the server at wss://x:1 ..."),
        _errors.StreamResetError(pvtunnel.ErrorCode.CANCEL, "client went away"),
        _errors.WebSocketClosed("going away", 1001),
        _errors.EncryptedKeyError(),
        _errors.ServerUnreachableError(111, "Connection refused"),
        _errors.InvalidValue("expected a table", at="[2]"),
    ],
    ids=lambda error: type(error).__name__,
)
@pytest.mark.parametrize("how", ["pickle", "copy"])
def test_errors_survive_pickle_and_copy(error: _errors.PvTunnelError, how: str) -> None:
    """A program may send one to another process (multiprocessing, trio-parallel) or
    copy it; each comes back whole, where ``cls(*args)`` failed for several."""
    again = pickle.loads(pickle.dumps(error)) if how == "pickle" else copy.copy(error)
    assert type(again) is type(error)
    assert (str(again), again.args, vars(again)) == (str(error), error.args, vars(error))
    if isinstance(error, OSError):
        assert isinstance(again, OSError)
        assert (again.errno, again.strerror) == (error.errno, error.strerror)
