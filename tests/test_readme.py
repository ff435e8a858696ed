"""README.md's examples work as written, and so do the commands of
docs/performance.md (the measurements README.md's Performance table sums up).

Its Python blocks run, its config blocks build and train, and every command
it shows names a command, script, config, setting, option, workflow and
project variable that exist. A README that drifts from the code fails here
rather than on a user's machine.
"""
import math
import re
from typing import Dict, List, Tuple

import pytest
import spacy
import srsly
import torch
import typer
from confection import Config
from spacy.cli._util import parse_config_overrides
from thinc.api import fix_random_seed

from spacy_rnn.callbacks import find_rnn_encoders
from spacy_rnn.cli import app

from .test_language_model import TINY, _save_bidirectional_lm, stream_corpus
from .util import ROOT, fixture_examples, small_textcat_config

README = (ROOT / "README.md").read_text(encoding="utf8")
# The commands and cited files of both are checked alike.
DOCS = README + "\n" + (ROOT / "docs" / "performance.md").read_text(encoding="utf8")
FENCED = re.compile(r"```(\w*)\n(.*?)```", re.S)


def _blocks(lang: str) -> List[str]:
    return [m.group(2) for m in FENCED.finditer(DOCS) if m.group(1) == lang]


def _block_after(heading_text: str, lang: str) -> str:
    """The first `lang` block after the first line containing heading_text."""
    start = README.index(heading_text)
    for m in FENCED.finditer(README, start):
        if m.group(1) == lang:
            return m.group(2)
    raise AssertionError(f"no {lang} block after {heading_text!r} in README.md")


def _shell_spans() -> List[str]:
    """Text of every bash block (comments dropped, continuations joined) and
    every inline code span outside the blocks."""
    spans = []
    for block in _blocks("bash"):
        lines = [line.split(" #")[0] for line in block.splitlines() if not line.lstrip().startswith("#")]
        spans.append("\n".join(lines).replace("\\\n", " "))
    prose = FENCED.sub("", DOCS)
    spans.extend(re.findall(r"`([^`]+)`", prose))
    return spans


def _commands() -> List[Tuple[str, List[str]]]:
    """(target, arguments) for each `python ...`, bare `spacy ...` and
    `bash ...` invocation in the README, where target is "spacy_rnn NAME",
    "spacy NAME ...", or a script path."""
    commands = []
    for span in _shell_spans():
        # A bare `spacy ...` is `python -m spacy ...`; `bash x.sh` runs a script.
        tokens = []
        for tok in span.replace("&&", " ").replace(";", " ").split():
            if tok == "spacy" and (not tokens or tokens[-1] != "-m"):
                tokens += ["python", "-m", "spacy"]
            elif tok == "bash":
                tokens.append("python")
            else:
                tokens.append(tok)
        starts = [i for i, tok in enumerate(tokens) if re.fullmatch(r"(\S*/)?python3?", tok)]
        for i, end in zip(starts, starts[1:] + [len(tokens)]):
            words = tokens[i + 1 : end]
            if not words:
                continue
            if words[0].endswith(".sh"):
                commands.append((words[0], words[1:]))
                continue
            if words[0] == "-m" and len(words) > 1:
                module, rest = words[1], words[2:]
                if module == "spacy_rnn" and rest and rest[0] != "...":
                    commands.append((f"spacy_rnn {rest[0]}", rest[1:]))
                elif module == "spacy" and rest:
                    n = 2 if rest[0] in ("project", "init") and len(rest) > 1 else 1
                    # `spacy train` in a sentence names the command; it runs nothing.
                    if rest[n:] or rest[0] == "project":
                        commands.append((" ".join(["spacy"] + rest[:n]), rest[n:]))
            elif words[0].endswith(".py"):
                commands.append((words[0], words[1:]))
    return commands


def _options(args: List[str]) -> List[str]:
    opts = []
    for arg in args:
        arg = arg.strip("[]")
        if arg.startswith("--"):
            opts.append(arg.split("=")[0])
    return opts


def _is_placeholder(word: str) -> bool:
    return word.isupper() or word in ("OUT", "...") or word.startswith("--section")


COMMANDS = _commands()


def test_the_readme_shows_commands_of_every_kind():
    targets = {target.split()[0] for target, _ in COMMANDS}
    assert {"spacy_rnn", "spacy", "benchmarks/lm_throughput.py"} <= targets
    assert len(COMMANDS) > 30


def test_spacy_rnn_commands_and_options_exist():
    group = typer.main.get_command(app)
    for target, args in COMMANDS:
        if not target.startswith("spacy_rnn "):
            continue
        name = target.split()[1]
        assert name in group.commands, f"README shows `python -m spacy_rnn {name}`, no such command"
        known = {opt for param in group.commands[name].params for opt in param.opts}
        for opt in _options(args):
            if "." in opt or _is_placeholder(opt):
                continue  # config overrides (`--section.key value`)
            assert opt in known, f"README shows `spacy_rnn {name} {opt}`; its options are {sorted(known)}"


def test_shell_scripts_exist():
    scripts = [target for target, _ in COMMANDS if target.endswith(".sh")]
    assert "scripts/setup.sh" in scripts and "benchmarks/run_all.sh" in scripts
    for target in scripts:
        assert (ROOT / target).exists(), f"README runs `bash {target}`, which does not exist"


def test_scripts_and_their_options_exist():
    common = (ROOT / "benchmarks" / "_common.py").read_text()
    for target, args in COMMANDS:
        if not target.endswith(".py"):
            continue
        script = ROOT / target
        assert script.exists(), f"README runs {target}, which does not exist"
        known = set(re.findall(r"['\"](--[\w-]+)['\"]", script.read_text() + common))
        for opt in _options(args):
            assert opt in known, f"README shows `{target} {opt}`; the script has {sorted(known)}"


def test_spacy_train_commands_build_with_their_overrides():
    """Each `spacy train` line's config exists, and with its overrides applied
    it builds and validates (an override of a setting a factory lacks fails)."""
    seen = 0
    for target, args in COMMANDS:
        if target != "spacy train" or _is_placeholder(args[0]):
            continue
        seen += 1
        path = ROOT / args[0]
        assert path.exists(), f"README trains {args[0]}, which does not exist"
        words = [w.strip("[]").split("|")[0] for w in args[1:]]
        dotted = []
        for i, word in enumerate(words):
            if word.startswith("--") and "." in word:
                dotted += [word, words[i + 1]]
        overrides = parse_config_overrides(dotted)
        config = spacy.util.load_config(path, overrides=overrides, interpolate=False)
        try:
            spacy.util.load_model_from_config(config, auto_fill=True, validate=True)
        except Exception as err:  # noqa: BLE001 - re-raised with the README line
            raise AssertionError(f"README: spacy train {' '.join(args)}: {err}") from err
    assert seen >= 3


def test_project_commands_name_real_workflows_and_variables():
    project = srsly.read_yaml(ROOT / "project.yml")
    names = {cmd["name"] for cmd in project["commands"]} | set(project.get("workflows", {}))
    variables = set(project["vars"])
    for target, args in COMMANDS:
        if target != "spacy project run":
            continue
        assert args and args[0] in names, f"README runs `spacy project run {args[:1]}`, not in project.yml"
        for opt in _options(args):
            assert opt.startswith("--vars."), opt
            assert opt[len("--vars."):] in variables, f"README sets {opt}, not a var in project.yml"


def test_every_shipped_config_and_cited_result_is_in_the_readme_and_exists():
    for path in sorted((ROOT / "configs").glob("*.cfg")):
        assert path.name in README, f"configs/{path.name} is not documented in README.md"
    for cited in set(re.findall(r"(?:configs|docs/results|docs/performance|benchmarks|scripts)/[\w./-]*\w", DOCS)):
        assert (ROOT / cited).exists(), f"README.md or docs/performance.md cites {cited}, which does not exist"


def test_python_quickstart_runs_and_its_saved_pipeline_predicts_the_same(tmp_path, monkeypatch):
    block = _block_after("## Python quickstart", "python")
    monkeypatch.chdir(tmp_path)
    fix_random_seed(0)
    namespace: Dict = {}
    exec(compile(block, "README.md (Python quickstart)", "exec"), namespace)
    nlp = namespace["nlp"]
    # 20 updates on two examples: the classifier has learnt them.
    assert nlp("works great").cats["POS"] > 0.5
    assert nlp("broke in a day").cats["NEG"] > 0.5
    loaded = spacy.load(tmp_path / "my_pipeline")
    for text in ("works well", "broke in a day", ""):
        expected, got = nlp(text).cats, loaded(text).cats
        assert got.keys() == expected.keys()
        for label in expected:
            assert got[label] == pytest.approx(expected[label], abs=1e-6), (text, label)


def test_config_quickstart_builds_a_listening_textcat_that_trains():
    block = _block_after("## Config quickstart", "ini")
    text = '[nlp]\nlang = "en"\npipeline = ["tok2vec", "textcat"]\n\n[components]\n\n' + block
    config = Config().from_str(text)
    fix_random_seed(0)
    nlp = spacy.util.load_model_from_config(config, auto_fill=True, validate=True)
    assert nlp.get_pipe("tok2vec").listening_components == ["textcat"]
    examples = fixture_examples(nlp)
    optimizer = nlp.initialize(lambda: examples)
    first = last = None
    for _ in range(8):
        losses = {}
        nlp.update(examples, sgd=optimizer, losses=losses)
        first = losses["textcat"] if first is None else first
        last = losses["textcat"]
    assert math.isfinite(last) and last < first
    assert set(nlp("great value").cats) == {"positive", "negative"}


def test_using_a_trained_language_model_block_runs(tmp_path, monkeypatch):
    fix_random_seed(0)
    nlp = spacy.blank("en")
    nlp.add_pipe("rnn_lm", name="lm", config=TINY)  # the name the configs use
    corpus = stream_corpus()
    optimizer = nlp.initialize(lambda: corpus(nlp))
    examples = list(corpus(nlp))
    for i in range(0, len(examples), 4):
        nlp.update(examples[i : i + 4], sgd=optimizer)
    (tmp_path / "training" / "ptb").mkdir(parents=True)
    nlp.to_disk(tmp_path / "training" / "ptb" / "model-best")
    monkeypatch.chdir(tmp_path)
    block = _block_after("Using a trained model:", "python")
    namespace: Dict = {"spacy": spacy}
    results = []
    for line in block.strip().splitlines():
        source = line.split("  #")[0]
        try:
            code = compile(source, "README.md (rnn_lm usage)", "eval")
        except SyntaxError:
            exec(compile(source, "README.md (rnn_lm usage)", "exec"), namespace)
        else:
            results.append(eval(code, namespace))
    (logprob, ppl, surprisals), generated = results
    doc = namespace["doc"]
    assert math.isfinite(logprob) and logprob < 0
    assert ppl == pytest.approx(math.exp(-logprob / len(doc)), rel=1e-4)
    assert len(surprisals) == len(doc) and all(s > 0 for s in surprisals)
    again = namespace["nlp"].get_pipe("lm").generate("the company", n_tokens=20, temperature=0.8, top_k=50, seed=0)
    assert generated == again and generated


def test_transfer_block_initialises_a_classifier_from_an_lm(tmp_path, monkeypatch):
    block = _block_after("**Transfer (ULMFiT style).**", "ini")
    (tmp_path / "training" / "ptb").mkdir(parents=True)
    lm = _save_bidirectional_lm(tmp_path / "training" / "ptb" / "model-best")
    monkeypatch.chdir(tmp_path)
    nlp = spacy.blank("en")
    nlp.add_pipe("rnn_textcat", name="textcat", config=small_textcat_config())
    config = nlp.config.copy()
    config.update(Config().from_str("[initialize]\n\n" + block))
    nlp = spacy.util.load_model_from_config(config, auto_fill=True, validate=True)
    nlp.initialize(lambda: fixture_examples(nlp))
    (encoder,) = find_rnn_encoders(nlp, "textcat")
    for name, value in lm.module.fwd.fwd[0].state_dict().items():
        assert torch.equal(encoder.fwd[0].state_dict()[name], value), name
