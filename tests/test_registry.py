"""Every name that setup.cfg advertises resolves, in-process and through
entry points in a fresh interpreter."""
import configparser
import subprocess
import sys

import pytest
from spacy.util import registry

from .util import ROOT

GROUPS = {
    "spacy_factories": "factories",
    "spacy_architectures": "architectures",
    "spacy_scorers": "scorers",
    "spacy_misc": "misc",
    "spacy_readers": "readers",
    "spacy_loggers": "loggers",
    "spacy_callbacks": "callbacks",
    "thinc_schedules": "schedules",
    "thinc_optimizers": "optimizers",
}


def _advertised():
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    names = []
    for group, value in parser["options.entry_points"].items():
        for line in value.strip().splitlines():
            name, target = (part.strip() for part in line.split("=", 1))
            names.append((group, name, target))
    return names


ADVERTISED = _advertised()


def test_something_is_advertised():
    groups = {g for g, _, _ in ADVERTISED}
    assert {"spacy_factories", "spacy_architectures"} <= groups


@pytest.mark.parametrize("group,name,target", ADVERTISED)
def test_entry_point_resolves(group, name, target):
    assert group in GROUPS, f"unknown entry point group {group}"
    if group == "spacy_factories":
        # spaCy loads spacy_factories entry points through a registry of its
        # own and only then registers the factory under its internal name.
        func = registry._entry_point_factories.get(name)
    else:
        func = getattr(registry, GROUPS[group]).get(name)
    module, attr = target.split(":")
    imported = __import__(module, fromlist=[attr])
    assert func is getattr(imported, attr)


def test_factories_resolve_in_fresh_interpreter_without_import():
    factories = [n for g, n, _ in ADVERTISED if g == "spacy_factories"]
    script = (
        "import spacy\n"
        f"for name in {factories!r}:\n"
        "    nlp = spacy.blank('en')\n"
        "    nlp.add_pipe(name)\n"
        "    print(name, 'ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    for name in factories:
        assert f"{name} ok" in out.stdout
