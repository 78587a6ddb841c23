"""Every shared name has one home: the constants of ``common_types`` and the error classes of
``errors`` are defined nowhere else in the package, not even under another name."""

import ast
from pathlib import Path

import elm_jax.common_types as common_types
import elm_jax.errors as errors
from elm_jax.model.openelm import CHECKPOINT_POLICIES

PACKAGE = Path(common_types.__file__).parent
HOMES = {Path(common_types.__file__), Path(errors.__file__)}


def _module_level(tree: ast.Module):
    """(name, value node) of every module-level assignment, and class names with value None."""
    for node in tree.body:
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    yield target.id, node.value
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            yield node.target.id, node.value
        elif isinstance(node, ast.ClassDef):
            yield node.name, None


def _literal(node):
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError):
        return None


def _shared():
    names = {n for n in vars(common_types) if n.isupper()}
    values = [v for n, v in vars(common_types).items()
              if n in names and isinstance(v, (tuple, frozenset)) and len(v) > 1]
    classes = {n for n, v in vars(errors).items() if isinstance(v, type)}
    return names, values, classes


def test_shared_names_and_values_are_defined_only_in_their_home():
    names, values, classes = _shared()
    copies = []
    for path in PACKAGE.rglob("*.py"):
        if path in HOMES:
            continue
        for name, value in _module_level(ast.parse(path.read_text())):
            if name in names or name in classes:
                copies.append(f"{path.relative_to(PACKAGE)}: {name}")
            literal = _literal(value) if value is not None else None
            if isinstance(literal, (tuple, list)) and any(tuple(literal) == tuple(v) for v in values):
                copies.append(f"{path.relative_to(PACKAGE)}: {name} copies a common_types value")
    assert not copies, copies


def test_only_errors_defines_error_classes():
    defined = [f"{p.relative_to(PACKAGE)}: {n}" for p in PACKAGE.rglob("*.py") if p not in HOMES
               for n, v in _module_level(ast.parse(p.read_text())) if v is None and n.endswith("Error")]
    assert not defined, defined
    assert all(issubclass(getattr(errors, n), errors.ElmError) for n in _shared()[2]
               if n != "ElmError")


def test_every_remat_policy_name_has_an_implementation():
    assert set(CHECKPOINT_POLICIES) | {"none"} == set(common_types.REMAT_POLICIES)


def test_the_checker_finds_a_copy(tmp_path, monkeypatch):
    """The scan above can fail: a module that repeats a tuple of choices is reported."""
    fake = tmp_path / "elm_jax"
    fake.mkdir()
    (fake / "copy.py").write_text("IMPLS = ('auto', 'xla', 'pallas', 'pallas_tpu', 'pallas_gpu', "
                                  "'cudnn')\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", fake)
    try:
        test_shared_names_and_values_are_defined_only_in_their_home()
    except AssertionError as err:
        assert "copy.py: IMPLS copies a common_types value" in str(err)
    else:
        raise AssertionError("a copied constant went unnoticed")
