"""`spacy package` builds a wheel whose pipeline loads after installing that
wheel in a clean virtual environment (slow: it installs torch and spaCy)."""
import subprocess
import sys
import venv

import pytest
from thinc.api import Adam, fix_random_seed

from .util import ROOT, blank_with_textcat, fixture_examples


@pytest.mark.slow
def test_packaged_wheel_loads_in_clean_env(tmp_path):
    fix_random_seed(0)
    nlp = blank_with_textcat()
    examples = fixture_examples(nlp)
    nlp.initialize(lambda: examples)
    optimizer = Adam(0.01)
    for _ in range(5):
        nlp.update(examples, sgd=optimizer)
    nlp.meta["name"] = "rnn_demo"
    nlp.meta["version"] = "0.0.1"
    nlp.to_disk(tmp_path / "pipeline")
    expected = {k: round(v, 5) for k, v in nlp("works great").cats.items()}

    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(ROOT)], check=True)
    (tmp_path / "pkg").mkdir()
    subprocess.run(
        [sys.executable, "-m", "spacy", "package", str(tmp_path / "pipeline"), str(tmp_path / "pkg"),
         "--build", "wheel", "--force"],
        check=True, capture_output=True,
    )
    pipeline_wheel = next((tmp_path / "pkg").rglob("*.whl"))

    env_dir = tmp_path / "clean"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    # CPU torch first, as scripts/setup.sh does; then the pipeline wheel pulls
    # spacy-rnn (from the freshly built wheel) and spaCy.
    subprocess.run([str(py), "-m", "pip", "install", "-q", "torch==2.13.0"], check=True)
    subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--find-links", str(wheels), str(pipeline_wheel)],
        check=True,
    )
    script = "import json, spacy; nlp = spacy.load('en_rnn_demo'); print(json.dumps({k: round(v, 5) for k, v in nlp('works great').cats.items()}))"
    out = subprocess.run([str(py), "-c", script], capture_output=True, text=True, check=True, cwd=str(tmp_path))
    import json

    assert json.loads(out.stdout.strip().splitlines()[-1]) == expected
