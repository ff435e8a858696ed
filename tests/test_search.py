import json
import subprocess
import sys

import pytest
import srsly
from spacy.util import load_config, load_model_from_config

from spacy_rnn.optimization.search import load_space, weighted_score

from .util import ROOT

TINY = [
    "--training.max_steps", "4", "--training.eval_frequency", "2",
    "--components.textcat.model.tok2vec.embed.width", "16",
    "--components.textcat.model.tok2vec.encode.width", "16",
]


def test_grid_search_writes_table_log_and_best_config(fixture_corpus, tmp_path):
    space = tmp_path / "space.json"
    space.write_text(json.dumps({
        "components.textcat.model.tok2vec.encode.cell": {"type": "categorical", "choices": ["lstm", "gru"]},
    }))
    out = tmp_path / "search"
    result = subprocess.run(
        [sys.executable, "-m", "spacy_rnn", "search", str(ROOT / "configs" / "textcat_bilstm.cfg"),
         str(space), str(out), "--n-trials", "2", "--sampler", "grid",
         "--paths.train", str(fixture_corpus / "train.spacy"),
         "--paths.dev", str(fixture_corpus / "train.spacy"), *TINY],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    trials = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]
    assert sorted(t["values"]["components.textcat.model.tok2vec.encode.cell"] for t in trials) == ["gru", "lstm"]
    assert all(t["status"] == "ok" and 0 <= t["score"] <= 1 for t in trials)
    best = max(trials, key=lambda t: t["score"])
    table = (out / "results.md").read_text()
    assert "(best)" in table and table.count("\n") == 4
    config = load_config(out / "best.cfg")
    assert config["components"]["textcat"]["model"]["tok2vec"]["encode"]["cell"] == best["values"]["components.textcat.model.tok2vec.encode.cell"]
    load_model_from_config(config, auto_fill=True, validate=True)
    # The score is the one spacy train optimises, read from the trial's meta.
    meta = srsly.read_json(out / f"trial-{best['trial']:03d}" / "model-best" / "meta.json")
    assert weighted_score(meta["performance"], {"cats_score": 1.0}) == pytest.approx(best["score"])


@pytest.mark.parametrize(
    "space,message",
    [
        ({}, "non-empty"),
        ({"training.dropout": {"type": "uniform"}}, "type"),
        ({"training.dropout": {"type": "float", "low": 0.5, "high": 0.1}}, "low"),
        ({"x": {"type": "categorical", "choices": []}}, "choices"),
    ],
)
def test_bad_space_is_a_clear_error(tmp_path, space, message):
    path = tmp_path / "space.json"
    path.write_text(json.dumps(space))
    with pytest.raises(ValueError, match=message):
        load_space(path)


def test_shipped_space_is_valid():
    space = load_space(ROOT / "configs" / "search" / "textcat_space.json")
    config = load_config(ROOT / "configs" / "textcat_bilstm.cfg")
    for key in space:
        node = config
        for part in key.split("."):
            node = node[part]


def test_ablation_runs_each_variant_and_compares(fixture_corpus, tmp_path):
    variants = tmp_path / "variants.json"
    variants.write_text(json.dumps({
        "baseline": {},
        "weight drop": {"components.textcat.model.tok2vec.encode.weight_drop": 0.3},
        "broken": {"components.textcat.model.tok2vec.encode.cell": "transformer"},
    }))
    out = tmp_path / "ablation"
    result = subprocess.run(
        [sys.executable, "-m", "spacy_rnn", "ablate", str(ROOT / "configs" / "textcat_bilstm.cfg"),
         str(variants), str(out), "--paths.train", str(fixture_corpus / "train.spacy"),
         "--paths.dev", str(fixture_corpus / "train.spacy"), *TINY],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["variant"] for r in rows] == ["baseline", "weight drop", "broken"]
    assert rows[0]["status"] == "ok" and rows[1]["status"] == "ok"
    assert rows[2]["status"].startswith("failed") and "Unknown RNN cell" in rows[2]["status"]
    # Each run keeps its console output: the dev scores, or the traceback.
    assert "TEXTCAT" in (out / rows[0]["dir"] / "train.log").read_text()
    assert "Unknown RNN cell" in (out / rows[2]["dir"] / "train.log").read_text()
    table = (out / "results.md").read_text()
    assert "weight drop" in table and "weight_drop=0.3" in table and "failed" in table


def test_shipped_ablation_variants_load():
    from spacy_rnn.optimization.ablation import load_variants

    variants = load_variants(ROOT / "configs" / "search" / "textcat_ablation.json")
    assert "baseline" in variants and len(variants) > 5


def test_ablation_over_seeds_reports_mean_and_std(fixture_corpus, tmp_path):
    variants = tmp_path / "variants.json"
    variants.write_text(json.dumps({
        "baseline": {},
        "gru": {"components.textcat.model.tok2vec.encode.cell": "gru"},
        "broken": {"components.textcat.model.tok2vec.encode.cell": "transformer"},
    }))
    out = tmp_path / "ablation"
    table = tmp_path / "metrics" / "ablation.md"
    result = subprocess.run(
        [sys.executable, "-m", "spacy_rnn", "ablate", str(ROOT / "configs" / "textcat_bilstm.cfg"),
         str(variants), str(out), "--seeds", "0,1", "--table", str(table),
         "--paths.train", str(fixture_corpus / "train.spacy"),
         "--paths.dev", str(fixture_corpus / "train.spacy"), *TINY],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [(r["variant"], r["seed"]) for r in rows] == [
        (v, s) for v in ("baseline", "gru", "broken") for s in (0, 1)]
    assert [r["dir"] for r in rows] == [f"variant-{i:02d}-seed{s}" for i in range(3) for s in (0, 1)]
    for r in rows[:4]:
        cfg = (out / r["dir"] / "model-best" / "config.cfg").read_text()
        assert f"seed = {r['seed']}" in cfg
    from spacy_rnn.optimization.ablation import summarise

    base = summarise(rows, "baseline")
    scores = [r["score"] for r in rows[:2]]
    assert base["n"] == 2 and base["mean"] == pytest.approx(sum(scores) / 2)
    assert base["std"] == pytest.approx(abs(scores[0] - scores[1]) / 2 ** 0.5)
    text = table.read_text()
    assert text == (out / "results.md").read_text()
    assert "mean ± std over 2 seeds" in text
    line = next(l for l in text.splitlines() if l.startswith("| baseline"))
    assert f"{base['mean']:.4f} ± {base['std']:.4f}" in line
    assert "failed" in next(l for l in text.splitlines() if l.startswith("| broken"))


def test_lm_ablation_table_reads_in_perplexity():
    from spacy_rnn.optimization.ablation import _table

    rows = [
        {"variant": "baseline", "values": {}, "seed": s, "score": 1 / p, "seconds": 1.0, "status": "ok"}
        for s, p in enumerate([200.0, 210.0])
    ] + [
        {"variant": "clip", "values": {"x.grad_clip": 0.0}, "seed": s, "score": 1 / p, "seconds": 1.0, "status": "ok"}
        for s, p in enumerate([190.0, 194.0])
    ]
    text = _table(rows, ["baseline", "clip"], "baseline", ["lm_score"], 2)
    assert "dev perplexity" in text
    assert "| 205.0 ± 7.1 |" in text
    assert "| 192.0 ± 2.8 | -13.0 |" in text


@pytest.mark.parametrize(
    "variants_file,config_file",
    [("textcat_ablation.json", "textcat_bilstm.cfg"), ("textcat_tuning.json", "textcat_bilstm.cfg"),
     ("textcat_stability.json", "textcat_bigru_attention.cfg"), ("lm_ablation.json", "lm_ptb_cpu.cfg")],
)
def test_every_shipped_ablation_variant_builds_its_pipeline(variants_file, config_file):
    """A typo in a variant's dotted key would only fail after the earlier
    variants had trained for an hour: build each variant's pipeline here."""
    from spacy.util import load_config, load_model_from_config

    from spacy_rnn.optimization.ablation import load_variants

    variants = load_variants(ROOT / "configs" / "search" / variants_file)
    for name, values in variants.items():
        config = load_config(ROOT / "configs" / config_file, overrides=dict(values))
        nlp = load_model_from_config(config, auto_fill=True, validate=True)
        for key, value in values.items():
            section, *path = key.split(".")
            node = nlp.config[section]
            for part in path:
                node = node[part]
            if isinstance(value, dict):  # auto-fill adds defaults
                node = {k: node[k] for k in value}
            assert node == value, (name, key)


def test_ablation_and_search_run_jobs_side_by_side(fixture_corpus, tmp_path):
    """--jobs 2: every run ends up in the log and the table in variant order
    (whatever order they finish in), failures included."""
    variants = tmp_path / "variants.json"
    variants.write_text(json.dumps({
        "baseline": {},
        "broken": {"components.textcat.model.tok2vec.encode.cell": "transformer"},
        "gru": {"components.textcat.model.tok2vec.encode.cell": "gru"},
    }))
    data = ["--paths.train", str(fixture_corpus / "train.spacy"),
            "--paths.dev", str(fixture_corpus / "train.spacy"), *TINY]
    out = tmp_path / "ablation"
    result = subprocess.run(
        [sys.executable, "-m", "spacy_rnn", "ablate", str(ROOT / "configs" / "textcat_bilstm.cfg"),
         str(variants), str(out), "--seeds", "0,1", "--jobs", "2", *data],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [(r["variant"], r["seed"]) for r in rows] == [
        (v, s) for v in ("baseline", "broken", "gru") for s in (0, 1)]
    assert [r["status"] == "ok" for r in rows] == [True, True, False, False, True, True]
    for r in rows:
        if r["status"] == "ok":
            meta = srsly.read_json(out / r["dir"] / "model-best" / "meta.json")
            assert weighted_score(meta["performance"], {"cats_score": 1.0}) == pytest.approx(r["score"])
    table = (out / "results.md").read_text().splitlines()
    assert [line.split(" | ")[0] for line in table[2:]] == ["| baseline", "| broken", "| gru"]
    # A failure is one table cell: the error's own line, not its traceback.
    assert "failed: " in table[3] and "Unknown RNN cell" in table[3] and table[3].endswith("| | |")

    space = tmp_path / "space.json"
    space.write_text(json.dumps({
        "components.textcat.model.tok2vec.encode.cell": {"type": "categorical", "choices": ["lstm", "gru"]},
    }))
    result = subprocess.run(
        [sys.executable, "-m", "spacy_rnn", "search", str(ROOT / "configs" / "textcat_bilstm.cfg"),
         str(space), str(tmp_path / "search"), "--n-trials", "2", "--sampler", "grid", "--jobs", "2", *data],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    trials = [json.loads(line) for line in (tmp_path / "search" / "trials.jsonl").read_text().splitlines()]
    assert sorted(t["trial"] for t in trials) == [0, 1]
    assert sorted(t["values"]["components.textcat.model.tok2vec.encode.cell"] for t in trials) == ["gru", "lstm"]


def test_jobs_share_out_the_cores(monkeypatch):
    from spacy_rnn.optimization.search import thread_env

    assert thread_env(1) is None
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)), raising=False)
    env = thread_env(3)
    assert env["OMP_NUM_THREADS"] == "2" and env["MKL_NUM_THREADS"] == "2"
    assert thread_env(16)["OMP_NUM_THREADS"] == "1"
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    assert thread_env(2)["OMP_NUM_THREADS"] == "4"
    with pytest.raises(ValueError, match="jobs must be at least 1"):
        thread_env(0)
