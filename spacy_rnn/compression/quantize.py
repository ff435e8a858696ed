"""Dynamic int8 quantisation of a trained pipeline's recurrent encoders.

The float pipeline is written out with every ``spacy-rnn.RNNEncoder.v1``
block of its config renamed ``spacy-rnn.QuantizedRNNEncoder.v1`` (same
settings). Loading that copy quantises the float weights; saving it again
stores int8 weights and scales as safetensors. Thinc layers (embeddings,
Maxout, the output layer) stay float32: they are NumPy, not torch.
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
        ``output_dir``, and the number of encoders quantised.
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
    n = swap_encoders(config)
    if n == 0:
        shutil.rmtree(output_dir)
        raise ValueError(
            f"quantize: no {FLOAT_ENCODER} in {pipeline_dir}/config.cfg; nothing to quantise"
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
    """Quantise and measure size, speed and accuracy before and after."""
    _, n = quantize_pipeline(pipeline_dir, output_dir)
    before = spacy.load(pipeline_dir)
    after = spacy.load(output_dir)
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
