"""reviewapp.evaluation is a package of cohesive modules; its __init__ keeps the old flat API."""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

import reviewapp.evaluation as ev

ROOT = Path(__file__).resolve().parents[2]
IMPORT = re.compile(r"^\s*from (?:reviewapp|\.+) import evaluation(?: as (\w+))?\b", re.MULTILINE)


def uses_of_the_package() -> dict[str, set[str]]:
    """Return, per file, the attributes it takes from reviewapp.evaluation through its import alias."""
    uses: dict[str, set[str]] = {}
    for path in [*ROOT.glob("reviewapp/**/*.py"), *ROOT.glob("tests/**/*.py"), *ROOT.glob("bench/*.py")]:
        if "evaluation" in path.relative_to(ROOT).parts[:2]:
            continue  # the package itself
        text = path.read_text()
        for match in IMPORT.finditer(text):
            alias = match.group(1) or "evaluation"
            names = set(re.findall(rf"(?<![\w.]){alias}\.([A-Za-z_]\w*)", text))
            uses.setdefault(str(path.relative_to(ROOT)), set()).update(names)
    return uses


def test_every_name_the_code_takes_from_the_package_is_re_exported() -> None:
    uses = uses_of_the_package()
    # The admin, the API, both commands, the template tags and the app tests import the package.
    assert {"reviewapp/admin.py", "reviewapp/api/evaluations.py", "tests/app/test_evaluation_app.py"} <= set(
        uses
    )
    missing = {f: sorted(n for n in names if n not in ev.__all__) for f, names in uses.items()}
    assert not {f: n for f, n in missing.items() if n}


def test_each_public_name_is_defined_in_one_submodule() -> None:
    assert hasattr(ev, "__path__"), "reviewapp.evaluation should be a package"
    modules = {
        info.name: importlib.import_module(f"reviewapp.evaluation.{info.name}")
        for info in pkgutil.iter_modules(ev.__path__)
    }
    assert {"gold", "runs", "reports", "thresholds", "ab", "drift", "promotion"} <= set(modules)
    for name in ev.__all__:
        if name == "ReviewAppError":
            continue  # re-exported from reviewapp.errors, as the flat module did
        obj = getattr(ev, name)
        homes = [m for m, module in modules.items() if getattr(module, name, None) is obj]
        assert homes, f"{name} is not defined in a submodule"


def test_the_evaluation_job_keeps_its_celery_name() -> None:
    # Queued messages name the task: a move must not orphan jobs already on the broker.
    assert ev.run_evaluation.name == "reviewapp.evaluation.run_evaluation"
