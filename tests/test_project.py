"""Tests for the weasel/spaCy project: project.yml, its scripts and a smoke run.

The deps/outputs check knows, for every tool the workflows call, which paths
a script line reads and writes, and compares that with what each command
declares: a command that reads something it doesn't list in ``deps`` would
not re-run when that changes, and one that writes something it doesn't list
in ``outputs`` would be skipped while its output is missing.
"""
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple

import pytest
import spacy
import srsly
from spacy.training import Corpus
from weasel.util import load_project_config

from .util import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import plot_curves  # noqa: E402
import results_table  # noqa: E402

GENERATED = ("corpus/", "training/", "metrics/", "plots/", "packages/")
# Every config in configs/ sets [nlp] lang = "en", so spacy package names the
# package en_<name>-<version> (checked in test_configs_are_english).
LANG = "en"
WORKFLOWS = ("smoke", "ptb", "wikitext2", "amazon", "all")


def load_project(tmp_path: Path, overrides: Optional[Dict[str, str]] = None) -> Dict:
    # A copy, because load_project_config creates the project's directories.
    shutil.copy(ROOT / "project.yml", tmp_path / "project.yml")
    return load_project_config(tmp_path, overrides=overrides or {})


def _split_args(args: List[str], flags: Tuple[str, ...] = ("--force",)) -> Tuple[List[str], Dict[str, str]]:
    positionals: List[str] = []
    options: Dict[str, str] = {}
    i = 0
    while i < len(args):
        if args[i].startswith("--"):
            if args[i] in flags:
                options[args[i]] = ""
                i += 1
            else:
                options[args[i]] = args[i + 1]
                i += 2
        else:
            positionals.append(args[i])
            i += 1
    return positionals, options


def reads_writes(line: str) -> Tuple[List[str], List[str]]:
    """Paths one script line reads and writes, from the tools' CLIs.

    RETURNS (Tuple[List[str], List[str]]): Reads and writes. A write ending in
        "/" stands for any file under that folder.
    """
    argv = shlex.split(line)
    assert argv[0] == "python", f"unexpected program in script line: {line}"
    if argv[1] == "-c":
        # Deleting a stale training log; the next line writes it again.
        return [], re.findall(r"Path\('([^']+)'\)", argv[2])
    if argv[1] == "-m":
        module, sub, args = argv[2], (argv[3] if len(argv) > 3 else ""), argv[4:]
        pos, opt = _split_args(args)
        if (module, sub) == ("spacy_rnn", "convert-amazon"):
            source = [] if pos[0] == "amazon_polarity" else [pos[0]]  # a hub id
            return source, [f"{pos[1]}/{s}.spacy" for s in ("train", "dev", "test")]
        if (module, sub) == ("spacy_rnn", "convert-blitzer"):
            writes = [pos[1]]
            if "--corpus-dir" in opt:
                writes += [f"{opt['--corpus-dir']}/{s}.spacy" for s in ("train", "dev", "test")]
            return [pos[0]], writes
        if (module, sub) == ("spacy_rnn", "convert-stream"):
            return [pos[0]], [pos[1]]
        if (module, sub) == ("spacy_rnn", "ablate"):
            reads = [pos[0], pos[1], opt["--paths.train"], opt["--paths.dev"]]
            return reads, [opt["--table"], f"{pos[2]}/results.md", f"{pos[2]}/results.jsonl"]
        if (module, sub) == ("spacy_rnn", "evaluate-lm"):
            return [pos[0], pos[1]], [opt["--output"]]
        if (module, sub) == ("spacy", "train"):
            reads = [pos[0], opt["--paths.train"], opt["--paths.dev"]]
            writes = [f"{opt['--output']}/model-best", f"{opt['--output']}/model-last"]
            return reads, writes + [opt["--training.logger.output_file"]]
        if (module, sub) == ("spacy", "evaluate"):
            return [pos[0], pos[1]], [opt["--output"]]
        if (module, sub) == ("spacy", "package"):
            name = f"{LANG}_{opt['--name']}-{opt['--version']}"
            assert opt.get("--build") == "wheel", f"package without a wheel: {line}"
            return [pos[0]], [f"{pos[1]}/{name}/dist/{name}-py3-none-any.whl"]
        if module == "zipfile":
            assert argv[3] == "-e", line
            return [argv[4]], [argv[5].rstrip("/") + "/"]
    script = argv[1]
    pos, opt = _split_args(argv[2:])
    if script == "scripts/plot_curves.py":
        return [pos[0]], [pos[1]]
    if script == "scripts/results_table.py":
        return [p for p in pos if "*" not in p], [opt["--output"]]
    if script == "scripts/check_assets.py":
        return [], []
    if script == "scripts/hf_to_text.py":
        # The source is a hub id, not a file.
        return [], [pos[2]]
    raise AssertionError(f"test doesn't know what this script line reads/writes: {line}")


def expected_deps_outputs(cmd: Dict) -> Tuple[Set[str], Set[str], List[str]]:
    reads: Set[str] = set()
    writes: Set[str] = set()
    prefixes: List[str] = []
    for line in cmd["script"]:
        r, w = reads_writes(line)
        # What an earlier line of the same command wrote is internal.
        reads.update(p for p in r if p not in writes)
        writes.update(p for p in w if not p.endswith("/"))
        prefixes.extend(p for p in w if p.endswith("/"))
    return reads, writes, prefixes


def test_project_yml_loads_with_weasel(tmp_path):
    config = load_project(tmp_path)
    names = [c["name"] for c in config["commands"]]
    assert len(names) == len(set(names)), "duplicate command names"
    for workflow in WORKFLOWS:
        assert workflow in config["workflows"], f"workflow {workflow} missing"
        for step in config["workflows"][workflow]:
            assert step in names, f"workflow {workflow} runs unknown command {step}"
    assert config["vars"]["gpu_id"] == -1
    for d in ("corpus", "training", "metrics", "plots", "packages"):
        assert (tmp_path / d).is_dir()


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"vars.ptb_dir": "../shared/data/ptb", "vars.amazon_jsonl": "../shared/data/amazon-mds/reviews.jsonl"},
        {"vars.gpu_id": 0, "vars.ptb_config": "lm_ptb_gpu.cfg"},
    ],
)
def test_deps_and_outputs_match_scripts(tmp_path, overrides):
    config = load_project(tmp_path, overrides)
    for cmd in config["commands"]:
        reads, writes, prefixes = expected_deps_outputs(cmd)
        deps, outputs = set(cmd.get("deps", [])), set(cmd.get("outputs", []))
        assert deps == reads, f"{cmd['name']}: deps {sorted(deps)} but script reads {sorted(reads)}"
        if prefixes:
            assert outputs and all(any(o.startswith(p) for p in prefixes) for o in outputs), cmd["name"]
        else:
            assert outputs == writes, f"{cmd['name']}: outputs {sorted(outputs)} but script writes {sorted(writes)}"
        # And the other way round: every generated path the script names is
        # tracked (a folder such as an --output dir through its contents).
        tracked = deps | outputs
        for line in cmd["script"]:
            for token in shlex.split(line):
                if token.startswith(GENERATED) and "*" not in token:
                    assert any(t == token or t.startswith(token.rstrip("/") + "/") for t in tracked), (
                        f"{cmd['name']}: {token} is in the script but not in deps/outputs"
                    )


def test_workflow_steps_are_fed_by_earlier_steps(tmp_path):
    config = load_project(tmp_path)
    commands = {c["name"]: c for c in config["commands"]}
    for workflow, steps in config["workflows"].items():
        produced: Set[str] = set()
        for step in steps:
            for dep in commands[step].get("deps", []):
                if dep.startswith(GENERATED):
                    assert dep in produced, f"{workflow}: {step} needs {dep}, which no earlier step makes"
            produced.update(commands[step].get("outputs", []))


def test_gpu_vars_switch_device_and_config(tmp_path):
    config = load_project(tmp_path, {"vars.gpu_id": 0, "vars.ptb_config": "lm_ptb_gpu.cfg"})
    train = next(c for c in config["commands"] if c["name"] == "train-ptb")
    assert "configs/lm_ptb_gpu.cfg" in train["deps"]
    assert "--gpu-id 0" in train["script"][1] and "configs/lm_ptb_gpu.cfg" in train["script"][1]
    # The GPU config's own step budget applies: no max_steps override.
    assert "--training.max_steps" not in train["script"][1]
    for cmd in config["commands"]:
        for line in cmd["script"]:
            if re.search(r"spacy (train|evaluate)|evaluate-lm", line):
                assert "--gpu-id 0" in line, f"{cmd['name']} ignores gpu_id: {line}"


def test_configs_are_english():
    for cfg in (ROOT / "configs").glob("*.cfg"):
        lang = re.search(r"^\[nlp\][^\[]*?^lang = \"(\w+)\"", cfg.read_text(), re.M | re.S)
        assert lang and lang.group(1) == LANG, f"{cfg.name}: package names assume lang {LANG}"


@pytest.mark.parametrize("var", ["textcat_config", "ablate_textcat_config", "ptb_config", "wikitext2_config"])
def test_config_vars_name_existing_configs(tmp_path, var):
    config = load_project(tmp_path)
    cfg_path = ROOT / "configs" / config["vars"][var]
    assert cfg_path.exists(), f"vars.{var} names {cfg_path.name}, which is not in configs/"
    spacy.util.load_config(cfg_path, interpolate=False)


def test_amazon_max_steps_defaults_to_config(tmp_path):
    # vars.max_steps overrides training.max_steps; by default it must keep
    # the config's own budget (0 would mean "no limit").
    config = load_project(tmp_path)
    cfg = spacy.util.load_config(ROOT / "configs" / config["vars"]["textcat_config"], interpolate=False)
    assert config["vars"]["max_steps"] == cfg["training"]["max_steps"]


def test_wikitext2_max_steps_defaults_to_config(tmp_path):
    # vars.wikitext2_max_steps overrides training.max_steps of train-wikitext2;
    # by default the released config's budget is kept.
    config = load_project(tmp_path)
    cfg = spacy.util.load_config(ROOT / "configs" / config["vars"]["wikitext2_config"], interpolate=False)
    assert config["vars"]["wikitext2_max_steps"] == cfg["training"]["max_steps"]


def test_asset_checksums_are_md5(tmp_path):
    config = load_project(tmp_path)
    for asset in config["assets"]:
        if asset.get("checksum"):
            assert re.fullmatch(r"[0-9a-f]{32}", asset["checksum"]), asset["dest"]


def test_plot_curves_writes_png(tmp_path):
    log = tmp_path / "log.jsonl"
    records = [
        {"epoch": 0, "step": s, "losses": {"rnn_lm": 5.0 / (s + 1)}, "scores": {"lm_loss": 500.0 / (s + 1), "lm_ppl": 10000.0 / (s + 1)}, "score": -1.0 / (s + 1)}
        for s in (0, 10, 20)
    ]
    log.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    out = tmp_path / "plots" / "run.png"
    assert plot_curves.main([str(log), str(out), "--title", "run"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_curves_names_bad_line(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text('{"step": 0, "losses": {}, "scores": {}, "score": 0}\n{"step": 1,\n')
    with pytest.raises(ValueError, match=r"log.jsonl, line 2"):
        plot_curves.read_log(log)


def test_results_table_rows(tmp_path):
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "amazon.json").write_text(
        json.dumps({"cats_score": 0.8, "cats_micro_f": 0.81, "cats_macro_f": 0.8, "cats_macro_auc": 0.9})
    )
    (tmp_path / "metrics" / "ptb.json").write_text(json.dumps({"tokens": 82430, "nll": 4.6, "perplexity": 99.48}))
    (tmp_path / "training" / "ptb").mkdir(parents=True)
    (tmp_path / "training" / "ptb" / "train_log.jsonl").write_text(
        '{"step": 0, "score": -1.0}\n{"step": 100, "score": -0.5}\n'
    )
    out = tmp_path / "metrics" / "results.md"
    argv = [str(tmp_path / "metrics" / "*.json"), "--output", str(out), "--training-dir", str(tmp_path / "training")]
    assert results_table.main(argv) == 0
    table = out.read_text()
    assert "| amazon | text classification | 0.8100 | 0.8000 | 0.9000 |" in table
    assert "99.48" in table and "82430" in table and "| 100 | -0.5000 |" in table
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(ValueError, match="bad.json"):
        results_table.metrics_row(bad, tmp_path)


def test_results_table_adds_lm_dev_perplexity(tmp_path):
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "ptb.json").write_text(json.dumps({"tokens": 82430, "nll": 4.9, "perplexity": 134.0}))
    (tmp_path / "training" / "ptb").mkdir(parents=True)
    # spacy.ConsoleLogger.v2 logs scores times 100.
    (tmp_path / "training" / "ptb" / "train_log.jsonl").write_text(
        '{"step": 500, "scores": {"lm_score": 0.5, "lm_ppl": 20000.0}, "score": 0.005}\n'
        '{"step": 1000, "scores": {"lm_score": 0.7, "lm_ppl": 13938.51}, "score": 0.0072}\n'
    )
    row = results_table.metrics_row(tmp_path / "metrics" / "ptb.json", tmp_path / "training")
    assert row["best dev perplexity"] == "139.39" and row["train steps"] == "1000"


def _weasel(project_dir: Path, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "weasel", "run", *args, str(project_dir)],
        capture_output=True,
        text=True,
        cwd=project_dir,
    )
    assert proc.returncode == 0, f"weasel run {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def test_smoke_workflow_end_to_end(tmp_path):
    """`spacy project run smoke`, the README's first command, in a copy."""
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(ROOT / "project.yml", project / "project.yml")
    for folder in ("configs", "scripts", "assets/fixtures"):
        shutil.copytree(ROOT / folder, project / folder)
    _weasel(project, "smoke")
    for path in (
        "corpus/smoke/amazon/train.spacy",
        "training/smoke-textcat/model-best",
        "training/smoke-textcat/train_log.jsonl",
        "plots/smoke-textcat.png",
        "metrics/smoke/smoke-textcat.json",
        "packages/en_smoke_textcat-0.1.0/dist/en_smoke_textcat-0.1.0-py3-none-any.whl",
        "training/smoke-lm/model-best",
        "plots/smoke-lm.png",
        "metrics/smoke/smoke-lm.json",
        "metrics/smoke/results.md",
    ):
        assert (project / path).exists(), f"smoke workflow did not make {path}"
    # The metrics are model-best's on the test split (for exclusive classes
    # micro F is accuracy). Twenty steps don't learn the five held-out
    # reviews (it calls them all negative), so no bound on the score.
    best = spacy.load(project / "training/smoke-textcat/model-best")
    test_docs = [eg.reference for eg in Corpus(project / "corpus/smoke/amazon/test.spacy")(best)]
    correct = sum(
        max(pred.cats, key=pred.cats.get) == max(gold.cats, key=gold.cats.get)
        for pred, gold in zip(best.pipe(doc.text for doc in test_docs), test_docs)
    )
    scores = srsly.read_json(project / "metrics/smoke/smoke-textcat.json")
    assert scores["cats_micro_f"] == pytest.approx(correct / len(test_docs))
    # Untrained, the LM scores 20.0 (the log's step 0; chance is 20 word
    # types); the twenty steps reach 16.4.
    lm = srsly.read_json(project / "metrics/smoke/smoke-lm.json")
    assert lm["tokens"] == 318 and lm["perplexity"] < 18
    table = (project / "metrics/smoke/results.md").read_text()
    assert "| smoke-textcat | text classification |" in table and "| smoke-lm | language model |" in table
    # Nothing changed, so weasel skips every step: deps/outputs are right.
    rerun = _weasel(project, "smoke")
    assert rerun.stdout.count("nothing changed") == len(load_project(tmp_path)["workflows"]["smoke"])
    # The package holds model-best: the same scores for every text.
    packaged = spacy.load(project / "packages/en_smoke_textcat-0.1.0/en_smoke_textcat/en_smoke_textcat-0.1.0")
    texts = ["works great and I love it"] + [doc.text for doc in test_docs]
    for doc, ref in zip(packaged.pipe(texts), best.pipe(texts)):
        assert set(doc.cats) == {"positive", "negative"}
        assert abs(sum(doc.cats.values()) - 1.0) < 1e-4
        for label, score in ref.cats.items():
            assert doc.cats[label] == pytest.approx(score, abs=1e-6)
