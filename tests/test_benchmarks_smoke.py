"""Each benchmark script runs end to end with tiny settings on the fixtures
and prints one JSON object with the keys the README's figures come from."""
import json
import os
import platform
import subprocess
import sys

import pytest
import spacy

from .util import FIXTURES, ROOT

BENCH = ROOT / "benchmarks"
ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
REVIEWS = FIXTURES / "reviews_tiny.jsonl"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from spacy_rnn.corpus.amazon import convert_amazon

    out = tmp_path_factory.mktemp("bench") / "amazon"
    convert_amazon(str(REVIEWS), out)
    return out


@pytest.fixture(scope="module")
def ptb(tmp_path_factory):
    out = tmp_path_factory.mktemp("ptb")
    text = (FIXTURES / "stream_tiny.txt").read_text()
    for split in ("train", "valid", "test"):
        (out / f"ptb.{split}.txt").write_text(text)
    return out


def run_script(name, *args):
    out = subprocess.run(
        [sys.executable, str(BENCH / name), "--threads", "1", *map(str, args)],
        capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    assert result["threads"] == 1
    return result


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
def test_encoder_speed(cell):
    r = run_script(
        "encoder_speed.py", "--data", REVIEWS, "--batches", 2, "--warmup", 1,
        "--seconds", 0.2, "--batch-size", 4, "--max-length", 40, "--overheads", "0,4",
        "--cell", cell,
    )
    assert r["cell"] == cell
    assert r["rnn_kernel"] == (None if cell == "lstm" else "fused")
    for key in ("packed_vs_padded_ratio", "best_bucket_overhead", "methods",
                "rnnstack_packed_vs_padded_ratio", "best_reverse_vs_padded_ratio"):
        assert key in r
    assert set(r["methods"]) == {"padded_fused", "pack_padded", "reverse_bo0", "reverse_bo4", "packed"}
    for name, m in r["methods"].items():
        assert m["seconds_per_batch"] > 0
        if name != "padded_fused":
            assert m["max_abs_diff_alone_vs_batch"] < 1e-4, name


def test_textcat_bench(corpus):
    r = run_script(
        "textcat_bench.py", "--corpus-dir", corpus, "--models", "bow,rnn_bilstm,rnn_bilstm_mixed",
        "--seconds", 0.3, "--batch-size", 8,
    )
    assert set(r["summary"]) == {"bow", "rnn_bilstm", "rnn_bilstm_mixed"}
    for name, s in r["summary"].items():
        for key in ("train_words_per_s", "infer_words_per_s", "accuracy", "peak_rss_mb"):
            assert s[key] is not None and s[key] > 0 or key == "accuracy", (name, key)
        assert 0.0 <= s["accuracy"] <= 1.0
    assert r["summary"]["rnn_bilstm"]["int8_vs_float32_infer_ratio"] > 0
    assert r["summary"]["bow"]["int8_vs_float32_infer_ratio"] is None
    assert r["gemm"] == "blis" and r["rnn_kernel"] == "fused"
    assert r["models"]["rnn_bilstm"]["rnn_stacks"] == 1
    assert r["models"]["bow"]["rnn_stacks"] == 0
    for model in r["models"].values():
        # Warm-up updates train but are not timed; timed ones come in blocks.
        assert model["warmup_steps"] == 3 and model["steps"] >= 3 + 1
        assert model["time_block"] == 10 and model["infer_passes"] >= 1
        assert model["gemm_layers_switched"] == 0


def test_textcat_bench_against_plain_torch(corpus):
    r = run_script(
        "textcat_bench.py", "--corpus-dir", corpus, "--models", "rnn_bilstm,plain_torch,plain_torch_padded",
        "--seconds", 0.3, "--batch-size", 8, "--no-quantize",
    )
    assert r["models"]["plain_torch"]["factory"] == "plain PyTorch"
    for name in ("plain_torch", "plain_torch_padded"):
        s = r["summary"][name]
        assert s["train_words_per_s"] > 0 and s["infer_words_per_s"] > 0 and 0 <= s["accuracy"] <= 1
        assert r["models"][name]["steps"] >= 4
    ratios = r["vs_plain_torch"]["rnn_bilstm"]
    assert ratios["against"] == "plain_torch" and set(r["vs_plain_torch"]) == {"rnn_bilstm"}
    summary = r["summary"]
    assert ratios["train_ratio"] == pytest.approx(
        summary["rnn_bilstm"]["train_words_per_s"] / summary["plain_torch"]["train_words_per_s"])
    assert ratios["infer_ratio"] > 0


def test_textcat_bench_bigru_attention_against_its_plain_model(corpus):
    r = run_script(
        "textcat_bench.py", "--corpus-dir", corpus, "--models", "rnn_bigru_attention,plain_torch_bigru_attention,plain_torch",
        "--seconds", 0.3, "--batch-size", 8, "--no-quantize",
    )
    assert r["models"]["rnn_bigru_attention"]["rnn_stacks"] == 1
    ratios = r["vs_plain_torch"]["rnn_bigru_attention"]
    assert ratios["against"] == "plain_torch_bigru_attention"
    summary = r["summary"]
    assert ratios["train_ratio"] == pytest.approx(
        summary["rnn_bigru_attention"]["train_words_per_s"]
        / summary["plain_torch_bigru_attention"]["train_words_per_s"])


def test_textcat_infer_ab_bigru_attention():
    r = run_script("textcat_infer_ab.py", "--data", REVIEWS, "--max-docs", 12, "--rounds", 1,
                   "--batch-size", 8, "--model", "rnn_bigru_attention")
    assert r["model"] == "rnn_bigru_attention" and r["plain_model"] == "plain_torch_bigru_attention"
    assert all(v > 0 for v in r["median_words_per_s"].values())


def test_textcat_infer_ab():
    r = run_script("textcat_infer_ab.py", "--data", REVIEWS, "--max-docs", 20, "--rounds", 2,
                   "--batch-size", 8, "--gemm", "torch")
    assert r["docs"] == 20 and r["words"] > 0 and r["gemm_layers_switched"] > 0
    for name, speeds in r["words_per_s_per_round"].items():
        assert len(speeds) == 2 and all(s > 0 for s in speeds), name
    medians = r["median_words_per_s"]
    assert r["pipe_ratio_median"] == pytest.approx(medians["rnn_textcat_pipe"] / medians["plain_pipe"])
    assert r["model_ratio_median"] == pytest.approx(medians["rnn_textcat_model"] / medians["plain_model"])


def test_plain_textcat_does_rnn_textcats_work():
    """The plain PyTorch baseline hashes the same attributes with the same
    seeds and table sizes as rnn_textcat's default embedding, and its packed
    BiLSTM is exact: a doc scores the same alone as in a batch."""
    import numpy
    import torch
    from spacy.attrs import IDS
    from thinc.api import NumpyOps

    sys.path.insert(0, str(BENCH))
    try:
        from _plain_textcat import ATTRS, PlainTextcat, featurize
    finally:
        sys.path.remove(str(BENCH))
    nlp = spacy.blank("en")
    textcat = nlp.add_pipe("rnn_textcat")
    textcat.add_label("a")
    textcat.add_label("b")
    hash_embeds = [n for n in textcat.model.walk() if n.name == "hashembed"]
    doc = nlp.make_doc("The battery died after TWO days, 100% disappointed.")
    keys, lengths = featurize([doc], torch.device("cpu"))
    ids = doc.to_array([IDS[a] for a in ATTRS]).astype("uint64")
    assert len(hash_embeds) == len(keys) == 4 and lengths.tolist() == [len(doc)]
    for column, (node, k) in enumerate(zip(hash_embeds, keys)):
        expected = NumpyOps().hash(numpy.ascontiguousarray(ids[:, column]), node.attrs["seed"])
        expected = expected % node.get_dim("nV")
        assert numpy.array_equal(k.numpy(), expected.astype("int64"))
    torch.manual_seed(0)
    model = PlainTextcat(2).eval()
    docs = [nlp.make_doc(t) for t in ("Short one.", "A much longer review that goes on and on about the product.")]
    with torch.no_grad():
        together = model(*featurize(docs, torch.device("cpu")), 0.0)
        alone = torch.cat([model(*featurize([d], torch.device("cpu")), 0.0) for d in docs])
    assert torch.allclose(together, alone, atol=1e-6)


@pytest.mark.parametrize("cell,depth,pooling", [("gru", 2, "attention"), ("gru", 1, "mean"), ("lstm", 2, "attention")])
def test_plain_textcat_other_encoders_are_exact(cell, depth, pooling):
    import torch

    sys.path.insert(0, str(BENCH))
    try:
        from _plain_textcat import PlainTextcat, featurize
    finally:
        sys.path.remove(str(BENCH))
    nlp = spacy.blank("en")
    torch.manual_seed(0)
    model = PlainTextcat(2, cell=cell, depth=depth, pooling=pooling).eval()
    assert model.rnn.num_layers == depth and model.rnn.mode == cell.upper()
    assert (model.query is not None) == (pooling == "attention")
    docs = [nlp.make_doc(t) for t in ("Short one.", "A much longer review that goes on and on about the product.", "Ok")]
    with torch.no_grad():
        together = model(*featurize(docs, torch.device("cpu")), 0.0)
        alone = torch.cat([model(*featurize([d], torch.device("cpu")), 0.0) for d in docs])
    assert torch.allclose(together, alone, atol=1e-6)
    assert not torch.allclose(together[0], together[1], atol=1e-3)


def test_plain_attention_pool_is_thincs():
    """The plain baseline's attention pooling computes what rnn_textcat's
    pooling = "attention" (ParametricAttention.v2 + reduce_sum) computes."""
    import numpy
    import torch

    from spacy_rnn.layers.pooling import rnn_pooling

    sys.path.insert(0, str(BENCH))
    try:
        from _plain_textcat import attention_pool
    finally:
        sys.path.remove(str(BENCH))
    rng = numpy.random.default_rng(0)
    lengths = [3, 7, 1]
    Xs = [rng.normal(size=(n, 6)).astype("float32") for n in lengths]
    pool = rnn_pooling("attention", 6)
    pool.initialize(X=Xs)
    attention = [n for n in pool.walk() if n.name == "para-attn"][0]
    query = attention.get_param("Q")
    expected = pool.predict(Xs)
    padded = torch.nn.utils.rnn.pad_sequence([torch.from_numpy(x) for x in Xs], batch_first=True)
    mask = torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None]
    got = attention_pool(padded, mask, torch.from_numpy(numpy.asarray(query)))
    numpy.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_spacy_train_kernels(corpus, tmp_path):
    runs = {}
    for kernel in ("fused", "torch"):
        r = run_script(
            "spacy_train_kernels.py", ROOT / "configs" / "textcat_gru.cfg",
            "--train", corpus / "train.spacy", "--dev", corpus / "dev.spacy",
            "--test", corpus / "test.spacy", "--max-steps", 4, "--eval-frequency", 2,
            "--rnn-kernel", kernel, "--output", tmp_path / kernel,
        )
        assert r["rnn_kernel"] == kernel and r["max_steps"] == 4
        assert r["train_wall_s"] > 0 and r["evaluate_words_per_s"] > 0
        assert (tmp_path / kernel / "model-best" / "meta.json").exists()
        runs[kernel] = r["test_scores"]
    # Same seed, same maths: after four steps the two kernels' pipelines
    # differ only in float rounding.
    assert runs["fused"]["cats_macro_auc"] == runs["torch"]["cats_macro_auc"]
    texts = [json.loads(line)["text"] for line in REVIEWS.read_text().splitlines()[:8]]
    fused, torch_ = (spacy.load(tmp_path / k / "model-last") for k in ("fused", "torch"))
    positive = []
    for a, b in zip(fused.pipe(texts), torch_.pipe(texts)):
        assert a.cats == pytest.approx(b.cats, abs=1e-5)
        positive.append(a.cats["positive"])
    # The scores differ from text to text, so equal ones mean equal models.
    assert max(positive) - min(positive) > 1e-3


@pytest.mark.parametrize(
    "extra",
    [[], ["--mixed-precision"], ["--rnn-lm-clip", "per-tensor"], ["--keep-freed-memory"],
     ["--cell", "gru"], ["--cell", "rnn_tanh", "--rnn-kernel", "torch"]],
)
def test_lm_throughput(ptb, extra):
    r = run_script(
        "lm_throughput.py", "--data", ptb, "--seconds", 0.4, "--rounds", 1,
        "--vocab-size", 60, "--width", 16, "--max-eval-tokens", 200, *extra,
    )
    assert r["mixed_precision"] is ("--mixed-precision" in extra)
    assert r["rnn_lm_clip"] == ("per-tensor" if "per-tensor" in extra else "global")
    cell = extra[1] if "--cell" in extra else "lstm"
    assert r["cell"] == cell
    assert r["rnn_kernel"] == (None if cell == "lstm" else "torch" if "torch" in extra else "fused")
    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert r["keep_freed_memory"] is ("--keep-freed-memory" in extra and glibc)
    faults = r["minor_page_faults_per_step_per_round"]
    assert len(faults["torch"]) == len(faults["spacy_rnn"]) == 1
    assert r["spacy_rnn_error"] is None
    for key in ("spacy_rnn_train_tokens_per_s", "torch_train_tokens_per_s", "train_ratio",
                "spacy_rnn_eval_tokens_per_s", "torch_eval_tokens_per_s", "eval_ratio"):
        assert key in r
    assert r["torch_train_tokens_per_s"] > 0
    assert len(r["train_ratio_per_round"]) == 1 and r["train_ratio_median_of_rounds"] > 0
    assert r["train_ratio"] > 0 and r["eval_ratio"] > 0
    # Both sides learn: the fixture has 20 word types, so a uniform rnn_lm
    # scores 20 (its spare rows are masked) and the plain loop 60.
    assert r["spacy_rnn_valid_ppl"] < 20 and r["torch_valid_ppl"] < 60


def test_profile_textcat():
    r = run_script(
        "profile_textcat.py", "--data", REVIEWS, "--max-docs", 40, "--steps", 2,
        "--batch-size", 8, "--infer-docs", 20, "--top", 5, "--gemm", "torch",
        "--cell", "gru", "--rnn-kernel", "torch",
    )
    assert r["gemm"] == "torch" and r["rnn_kernel"] == "torch"
    for phase in ("train", "infer"):
        assert r[phase]["top_own_time"]
        assert "own_time_by_library" in r[phase]


def test_profile_textcat_torch_profiler():
    r = run_script(
        "profile_textcat.py", "--torch-profiler", "--data", REVIEWS, "--max-docs", 40,
        "--steps", 2, "--batch-size", 8, "--infer-docs", 20, "--top", 3,
        "--models", "rnn_bilstm,torch_bilstm", "--rnn-bucket-overhead", 0, "--gemm", "numpy",
    )
    assert r["benchmark"] == "profile_textcat_operators" and r["rnn_bucket_overhead"] == 0
    assert r["gemm"] == "numpy"
    assert set(r["models"]) == {"rnn_bilstm", "torch_bilstm"}
    for model in r["models"].values():
        train, infer = model["train_per_step"], model["infer_per_batch_of_256"]
        assert train["ms_per_step"] > 0 and train["words_per_s"] > 0
        assert infer["ms_per_batch"] > 0 and infer["words_per_s"] > 0
        assert train["aten_ops"] > 0 and train["top_self_cpu"]


def test_cpu_gemm():
    r = run_script("cpu_gemm.py", "--rows", 50, "--n-in", 16, "--n-out", 4, "--repeats", 2)
    assert r["benchmark"] == "cpu_gemm"
    for backend in ("blis", "numpy", "torch"):
        assert set(r["ms"][backend]) == {"forward", "backward_input", "backward_weights"}
        assert r["ms_per_training_step"][backend] > 0
    for diffs in r["max_relative_difference_from_blis"].values():
        assert diffs["torch"] < 1e-5 and diffs["numpy"] < 1e-5
    assert r["blis_over_torch"] > 0 and r["blis_over_numpy"] > 0


def test_quantize_bench(corpus):
    r = run_script(
        "quantize_bench.py", "--corpus-dir", corpus, "--seconds", 0.3,
        "--sparsities", "0.5", "--min-seconds", 0, "--encoder-batches", 1,
    )
    assert r["int8_vs_float32_infer_ratio"] > 0
    assert r["encoder_only"]["int8_vs_float32_speed_ratio"] > 0
    assert r["prune"]["0.5"]["sparsity_reached"] == pytest.approx(0.5, abs=0.01)


def test_memory_growth(ptb):
    r = run_script(
        "memory_growth.py", "--steps", 4, "--every", 2, "--reviews", REVIEWS,
        "--ptb", ptb, "--lm-width", 16,
    )
    runs = {(run["model"], run["shim"]) for run in r["runs"]}
    assert runs == {(m, s) for m in ("textcat", "lm") for s in ("spacy_rnn", "thinc_stock")}
    for run in r["runs"]:
        assert [p[0] for p in run["rss_mb_curve"]] == [2, 4]
        assert all(p[1] > 0 for p in run["rss_mb_curve"])
        assert run["growth_mb_per_1000_steps"] is not None


def test_profile_lm(ptb):
    r = run_script(
        "profile_lm.py", "--data", ptb, "--seconds", 0.5, "--warmup", 0.1,
        "--vocab-size", 60, "--width", 16, "--max-train-tokens", 0,
    )
    assert r["steps"] > 0 and r["ms_per_step"] > 0
    parts = r["parts_ms_per_step"]
    assert parts["forward_backward"] > 0 and parts["optimizer_step"] > 0
    assert parts["global_norm_clip"] > 0  # clipped as the plain loop clips
    assert parts["forward_backward"] <= r["ms_per_step"] * 1.5
    assert r["top_own_time_ms_per_step"]


def test_profile_lm_torch_profiler(ptb):
    r = run_script(
        "profile_lm.py", "--data", ptb, "--torch-profiler", "--steps", 3, "--top", 5,
        "--vocab-size", 60, "--width", 16, "--max-train-tokens", 0,
    )
    assert r["benchmark"] == "profile_lm_operators"
    for name in ("spacy_rnn", "torch"):
        side = r["sides"][name]
        assert side["ms_per_step"] > 0 and side["aten_ops_per_step"] > 0
        assert side["top_self_cpu"] and "top_self_device" not in side  # CPU run
    assert r["step_ratio"] > 0


def test_profile_lm_host_overhead(ptb):
    r = run_script(
        "profile_lm.py", "--data", ptb, "--host-overhead", "--steps", 3, "--rounds", 1,
        "--vocab-size", 60, "--width", 16, "--max-train-tokens", 0,
    )
    assert r["benchmark"] == "profile_lm_host_overhead"
    ms = r["ms_per_step"]
    assert set(ms) == {"nlp_update", "component_update", "spacy_copy_examples", "plain_torch_step"}
    assert all(v > 0 for v in ms.values())
    assert r["step_ratio"] > 0 and r["step_ratio_without_language_update"] > 0
