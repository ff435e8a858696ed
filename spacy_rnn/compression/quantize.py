"""Dynamic int8 quantisation of a trained pipeline's recurrent encoders
and language models.

The float pipeline is written out with every ``spacy-rnn.RNNEncoder.v1``
block of its config renamed ``spacy-rnn.QuantizedRNNEncoder.v1`` (same
settings) and every ``rnn_lm`` component set to ``int8 = true``. Loading
that copy quantises the float weights; saving it again stores int8 weights
and scales as safetensors. Thinc layers (embeddings, Maxout, the output
layer) stay float32: they are NumPy, not torch.
"""
import shutil
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import spacy
from spacy.language import Language
from thinc.api import Config

from .report import compare_pipelines, load_examples, size_report

FLOAT_ENCODER = "spacy-rnn.RNNEncoder.v1"
INT8_ENCODER = "spacy-rnn.QuantizedRNNEncoder.v1"


def swap_encoders(config: Any, old: str = FLOAT_ENCODER, new: str = INT8_ENCODER) -> int:
    """Rename every ``old`` architecture block to ``new``, in place.

    config (Any): A config (nested dicts).
    RETURNS (int): Number of blocks renamed.
    """
    count = 0
    if isinstance(config, dict):
        if config.get("@architectures") == old:
            config["@architectures"] = new
            _drop_unknown_settings(config, new)
            count += 1
        for value in config.values():
            count += swap_encoders(value, old, new)
    return count


def int8_language_models(config: Any) -> int:
    """Set ``int8 = true`` on every ``rnn_lm`` component, in place.

    config (Any): A pipeline config.
    RETURNS (int): Number of components changed.
    """
    count = 0
    for block in config.get("components", {}).values():
        if block.get("factory") == "rnn_lm":
            block["int8"] = True
            block["mixed_precision"] = False
            count += 1
    return count


def _drop_unknown_settings(block: Dict, name: str) -> None:
    # Settings added to the float encoder later that only matter in training
    # (dropouts) would otherwise make the config fail to validate. A setting
    # that shapes the weights cannot slip through: loading the float weights
    # into the int8 module checks every tensor name and shape.
    import inspect

    from spacy.util import registry

    accepted = set(inspect.signature(registry.architectures.get(name)).parameters)
    for key in [k for k in block if not k.startswith("@") and k not in accepted]:
        del block[key]


def quantize_pipeline(
    pipeline_dir: Path, output_dir: Path, *, overwrite: bool = True
) -> Tuple[Language, int]:
    """Write an int8 copy of a pipeline.

    pipeline_dir (Path): A pipeline saved with ``nlp.to_disk``.
    output_dir (Path): Where the quantised pipeline goes.
    RETURNS (Tuple[Language, int]): The quantised pipeline, loaded from
        ``output_dir``, and the number of encoders and LMs quantised.
    """
    pipeline_dir, output_dir = Path(pipeline_dir), Path(output_dir)
    if output_dir.resolve() == pipeline_dir.resolve():
        raise ValueError("quantize: the output folder must differ from the input")
    if output_dir.exists():
        if not overwrite:
            raise FileExistsError(output_dir)
        shutil.rmtree(output_dir)
    shutil.copytree(pipeline_dir, output_dir)
    config_path = output_dir / "config.cfg"
    config = Config().from_disk(config_path, interpolate=False)
    n = swap_encoders(config) + int8_language_models(config)
    if n == 0:
        shutil.rmtree(output_dir)
        raise ValueError(
            f"quantize: no {FLOAT_ENCODER} and no rnn_lm in {pipeline_dir}/config.cfg; "
            f"nothing to quantise"
        )
    config.to_disk(config_path, interpolate=False)
    # Loading quantises the float weights; saving stores int8 + scales.
    nlp = spacy.load(output_dir)
    shutil.rmtree(output_dir)
    nlp.to_disk(output_dir)
    return spacy.load(output_dir), n


def quantize_and_report(
    pipeline_dir: Path,
    output_dir: Path,
    eval_data: Optional[Path] = None,
    max_eval: int = 0,
    min_seconds: float = 1.0,
) -> Dict:
    """Quantise and measure size, speed and accuracy (perplexity for a
    language model, with a token file as ``eval_data``) before and after."""
    _, n = quantize_pipeline(pipeline_dir, output_dir)
    before = spacy.load(pipeline_dir)
    after = spacy.load(output_dir)
    if "rnn_lm" in [before.get_pipe_meta(name).factory for name in before.pipe_names]:
        report = {
            "command": "quantize",
            "input": str(pipeline_dir),
            "output": str(output_dir),
            "scheme": "int8 weights, one scale per row, float activations (dynamic)",
            "components_quantized": n,
        }
        report.update(size_report(pipeline_dir, output_dir))
        if eval_data is not None:
            report.update(compare_language_models(before, after, eval_data, max_eval, min_seconds))
        return report
    examples = load_examples(before, eval_data, max_eval)
    report: Dict = {
        "command": "quantize",
        "input": str(pipeline_dir),
        "output": str(output_dir),
        "scheme": "int8 weights, one scale per row, float activations (dynamic)",
        "encoders_quantized": n,
    }
    report.update(size_report(pipeline_dir, output_dir))
    report.update(compare_pipelines(before, after, examples, min_seconds=min_seconds))
    return report


def compare_language_models(
    before: Language, after: Language, token_file: Path, max_tokens: int = 0, min_seconds: float = 1.0
) -> Dict:
    """Standard-protocol perplexity and evaluation tokens/s of two pipelines'
    ``rnn_lm`` on the same token stream (timed passes alternate; best of).

    before (Language): The float pipeline.
    after (Language): The quantised pipeline.
    token_file (Path): A token file (or ``.spacy`` corpus) read as one stream.
    max_tokens (int): Use the first N tokens (0: all).
    min_seconds (float): Time each side for at least this long.
    RETURNS (Dict): ``perplexity`` and ``speed_tokens_per_s``, before/after.
    """
    import time

    from ..callbacks import _find_lm
    from ..corpus.token_stream import read_stream

    if not Path(token_file).exists():
        raise FileNotFoundError(f"--eval-data {token_file} does not exist")
    tokens = read_stream(token_file)
    if max_tokens:
        tokens = tokens[:max_tokens]
    lms = [_find_lm(nlp, None, "pipeline") for nlp in (before, after)]
    results = [lm.evaluate_stream(tokens) for lm in lms]
    best = [float("inf"), float("inf")]
    spent = 0.0
    while spent < 2 * min_seconds or float("inf") in best:
        for i, lm in enumerate(lms):
            start = time.perf_counter()
            lm.evaluate_stream(tokens)
            elapsed = time.perf_counter() - start
            best[i] = min(best[i], elapsed)
            spent += elapsed
    n = results[0]["tokens"]
    ppl = [r["perplexity"] for r in results]
    return {
        "eval_tokens": n,
        "perplexity": {"before": ppl[0], "after": ppl[1], "change": ppl[1] - ppl[0]},
        "speed_tokens_per_s": {
            "before": n / best[0],
            "after": n / best[1],
            "ratio": best[0] / best[1],
        },
    }
