"""The type stubs match the runtime: every public symbol of the extension and of the package
has a stub (or an inline annotation) and every stub names something that exists."""

import ast
import inspect
import pathlib

import laminardb
from laminardb import _laminardb

STUB = pathlib.Path(laminardb.__file__).with_name("_laminardb.pyi")


def stub_symbols():
    tree = ast.parse(STUB.read_text())
    out = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            out[node.name] = {
                n.name for n in node.body if isinstance(n, (ast.FunctionDef, ast.AnnAssign)) and hasattr(n, "name")
            } | {n.target.id for n in node.body if isinstance(n, ast.AnnAssign)}
        elif isinstance(node, ast.AnnAssign):
            out[node.target.id] = set()
        elif isinstance(node, ast.FunctionDef):
            out[node.name] = set()
    return out


def test_extension_symbols_have_stubs_and_back():
    stubs = stub_symbols()
    runtime = {n for n in dir(_laminardb) if not n.startswith("_")} | {"__version__"}
    assert set(stubs) == runtime
    for cls in ("Connection", "Subscription"):
        members = {n for n in dir(getattr(_laminardb, cls)) if not n.startswith("_")}
        assert stubs[cls] == members, cls


def test_package_public_api_is_annotated():
    assert (pathlib.Path(laminardb.__file__).parent / "py.typed").exists()
    for name in laminardb.__all__:
        obj = getattr(laminardb, name)
        if inspect.isfunction(obj):
            assert obj.__annotations__.get("return") is not None, name
        if inspect.isclass(obj) and obj.__module__ == "laminardb":
            for attr, member in vars(obj).items():
                if attr.startswith("_") or not inspect.isfunction(member):
                    continue
                assert "return" in member.__annotations__, f"{name}.{attr}"
