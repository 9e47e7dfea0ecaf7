"""Every backend implements each concern protocol of backends/base.py in that concern's module, as a class named
after the protocol with the protocol's method names and parameters, and its package only composes those classes
(no facade of one-line delegations). A new backend that forgets a method, or shadows one concern's method with
another's, fails here instead of in the middle of a run."""
from __future__ import annotations

import importlib
import inspect

import pytest

from backends.base import CONCERNS, Backend

BACKENDS = ["torch", "paddle"]


def _methods(cls: type) -> set[str]:
    """Public methods a protocol class declares itself."""
    return {n for n, v in vars(cls).items() if inspect.isfunction(v) and not n.startswith("_")}


def _parameters(fn) -> list[str]:
    """Parameter names without `self` (a staticmethod binding has none; a method has it first)."""
    names = list(inspect.signature(fn).parameters)
    return names[1:] if names[:1] == ["self"] else names


def test_backend_protocol_is_exactly_the_union_of_the_concerns():
    assert not _methods(Backend), "Backend should declare nothing itself, only compose the concern protocols"
    declared = [name for proto in CONCERNS.values() for name in _methods(proto)]
    assert len(declared) == len(set(declared)), "a method is declared by two concerns"
    public = {n for n in dir(Backend) if not n.startswith("_") and inspect.isfunction(getattr(Backend, n))}
    assert public == set(declared)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("module_name", sorted(CONCERNS))
def test_each_module_implements_its_concern(backend: str, module_name: str):
    proto = CONCERNS[module_name]
    module = importlib.import_module(f"backends.{backend}.{module_name}")
    impl = getattr(module, proto.__name__, None)
    assert isinstance(impl, type), f"backends/{backend}/{module_name}.py has no class {proto.__name__}"
    for name in _methods(proto):
        assert hasattr(impl, name), f"{backend}: {proto.__name__}.{name} is missing"
        assert _parameters(getattr(impl, name)) == _parameters(getattr(proto, name)), (
            f"{backend}: {proto.__name__}.{name} takes {_parameters(getattr(impl, name))}, the protocol "
            f"{_parameters(getattr(proto, name))}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_package_composes_the_concerns_and_defines_nothing(backend: str):
    package = importlib.import_module(f"backends.{backend}")
    instance = package.create()
    cls = type(instance)
    own = [n for n, v in vars(cls).items() if callable(v) or isinstance(v, (staticmethod, classmethod))]
    assert not own, f"{cls.__name__} defines {own} itself: implement them in the concern's module"
    assert instance.name == backend
    for module_name, proto in CONCERNS.items():
        impl = getattr(importlib.import_module(f"backends.{backend}.{module_name}"), proto.__name__)
        for name in _methods(proto):
            # the method the stages call is the concern module's, not another concern's of the same name
            assert getattr(cls, name) is getattr(impl, name), f"{backend}: {name} is not {module_name}'s"
