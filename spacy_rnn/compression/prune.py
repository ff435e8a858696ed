"""Magnitude pruning of a trained pipeline's recurrent and dense weights.

Pruned weights are zeros in the usual dense tensors, so the result needs no
new format or architecture and loads like the original. Embedding tables,
biases and layer norms are left alone.
"""
import shutil
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy
import spacy
from spacy.language import Language
from thinc.api import Model, PyTorchShim

from .report import compare_pipelines, load_examples, size_report

SCOPES = ("tensor", "global")


class _Target:
    """One prunable weight tensor, readable and writable as NumPy."""

    def __init__(self, name, get, set_):
        self.name = name
        self.get = get
        self.set = set_


def find_targets(nlp: Language, include_dense: bool = True) -> List[_Target]:
    """Recurrent weights of torch modules, plus (with ``include_dense``) the
    weight matrices "W" of Thinc's dense layers (Linear, Softmax, Maxout)."""
    targets: List[_Target] = []
    seen = set()
    for pipe_name, pipe in nlp.components:
        model = getattr(pipe, "model", None)
        if not isinstance(model, Model):
            continue
        for i, node in enumerate(model.walk()):
            if id(node) in seen:
                continue
            seen.add(id(node))
            for shim in node.shims:
                if not isinstance(shim, PyTorchShim):
                    continue
                for pname, param in shim._model.named_parameters():
                    if param.ndim != 2 or "embed" in pname.lower():
                        continue
                    targets.append(_torch_target(f"{pipe_name}/{node.name}#{i}/{pname}", param))
            if include_dense and node.has_param("W") and node.get_param("W").ndim >= 2:
                targets.append(_thinc_target(f"{pipe_name}/{node.name}#{i}/W", node))
    return targets


def _torch_target(name, param) -> _Target:
    import torch

    def get():
        return param.detach().cpu().numpy().copy()

    def set_(value):
        with torch.no_grad():
            param.copy_(torch.as_tensor(value, device=param.device, dtype=param.dtype))

    return _Target(name, get, set_)


def _thinc_target(name, node) -> _Target:
    def get():
        return node.ops.to_numpy(node.get_param("W")).copy()

    def set_(value):
        node.set_param("W", node.ops.asarray(value, dtype="float32"))

    return _Target(name, get, set_)


def prune_targets(targets: List[_Target], sparsity: float, scope: str = "tensor") -> List[Dict]:
    """Zero the smallest-magnitude weights, in place.

    targets (List[_Target]): Tensors to prune.
    sparsity (float): Fraction of weights to zero, in [0, 1).
    scope (str): "tensor" (each tensor loses that fraction) or "global"
        (one threshold over all of them, on magnitudes relative to each
        tensor's RMS).
    RETURNS (List[Dict]): Name, size and sparsity reached per tensor.
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"--sparsity must be in [0, 1), got {sparsity}")
    if scope not in SCOPES:
        raise ValueError(f"--scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    values = [t.get() for t in targets]
    threshold = None
    # Layers differ in scale (a freshly trained output layer has tiny
    # weights), so a raw global threshold can wipe out a whole layer; the
    # global ranking uses magnitudes relative to each tensor's RMS instead.
    scales = [float(numpy.sqrt(numpy.mean(numpy.square(v)))) or 1.0 for v in values]
    if scope == "global" and values:
        magnitudes = numpy.concatenate(
            [numpy.abs(v).ravel() / s for v, s in zip(values, scales)]
        )
        k = int(sparsity * magnitudes.size)
        threshold = numpy.partition(magnitudes, k - 1)[k - 1] if k else -1.0
    report = []
    for target, value, scale in zip(targets, values, scales):
        flat = value.ravel()
        if scope == "tensor":
            k = int(sparsity * flat.size)
            if k:
                # Exactly k zeros per tensor, whatever the ties.
                flat[numpy.argpartition(numpy.abs(flat), k - 1)[:k]] = 0.0
        else:
            flat[numpy.abs(flat) / scale <= threshold] = 0.0
        target.set(flat.reshape(value.shape))
        report.append(
            {
                "name": target.name,
                "size": int(flat.size),
                "sparsity": float(numpy.mean(flat == 0.0)),
            }
        )
    return report


def prune_pipeline(
    pipeline_dir: Path,
    output_dir: Path,
    sparsity: float = 0.5,
    scope: str = "tensor",
    include_dense: bool = True,
) -> Tuple[Language, List[Dict]]:
    """Write a magnitude-pruned copy of a pipeline.

    RETURNS (Tuple[Language, List[Dict]]): The pruned pipeline and the
        per-tensor sparsity report.
    """
    nlp, tensors, _ = prune_and_finetune(pipeline_dir, output_dir, sparsity, scope, include_dense)
    return nlp, tensors


def prune_and_finetune(
    pipeline_dir: Path,
    output_dir: Path,
    sparsity: float = 0.5,
    scope: str = "tensor",
    include_dense: bool = True,
    *,
    finetune_steps: int = 0,
    train_data: Optional[Path] = None,
    dev_data: Optional[Path] = None,
    learn_rate: float = 0.001,
    seed: int = 0,
) -> Tuple[Language, List[Dict], Optional[Dict]]:
    """Prune, optionally fine-tune the pruned pipeline for ``finetune_steps``
    updates on ``train_data`` with the pruned weights held at zero (the
    masks are applied again after every step), and save it.

    train_data / dev_data are read with the pipeline's own
    ``[corpora.train]`` / ``[corpora.dev]`` readers (``paths.train`` /
    ``paths.dev`` set to them), batched with its ``[training.batcher]``, so a
    language model gets its token-stream reader and a text classifier its
    ``.spacy`` corpus. The optimiser is Adam(``learn_rate``).

    RETURNS (Tuple[Language, List[Dict], Optional[Dict]]): The pruned
        pipeline, the per-tensor sparsity report, and (when fine-tuning) the
        dev scores of the unpruned, pruned and fine-tuned pipeline.
    """
    pipeline_dir, output_dir = Path(pipeline_dir), Path(output_dir)
    if output_dir.resolve() == pipeline_dir.resolve():
        raise ValueError("prune: the output folder must differ from the input")
    if finetune_steps < 0:
        raise ValueError(f"--finetune-steps must be >= 0, got {finetune_steps}")
    if finetune_steps and train_data is None:
        raise ValueError("prune: --finetune-steps needs --train-data")
    nlp = spacy.load(pipeline_dir)
    dev = _corpus_examples(nlp, "dev", dev_data) if finetune_steps and dev_data else []
    finetune: Optional[Dict] = None
    if finetune_steps:
        finetune = {"steps": int(finetune_steps), "train_data": str(train_data),
                    "dev_data": str(dev_data) if dev_data else None,
                    "learn_rate": learn_rate, "dev_docs": len(dev)}
        finetune["unpruned"] = _dev_scores(nlp, dev)
    targets = find_targets(nlp, include_dense=include_dense)
    if not targets:
        raise ValueError(f"prune: no prunable weights in {pipeline_dir}")
    tensors = prune_targets(targets, sparsity, scope)
    if finetune is not None:
        masks = [t.get() != 0.0 for t in targets]
        finetune["pruned"] = _dev_scores(nlp, dev)
        finetune["loss"] = finetune_masked(
            nlp, targets, masks, train_data, finetune_steps, learn_rate=learn_rate, seed=seed
        )
        finetune["finetuned"] = _dev_scores(nlp, dev)
        finetune["change"] = {
            key: finetune["finetuned"][key] - finetune["pruned"][key]
            for key in finetune["pruned"]
            if finetune["pruned"][key] is not None and finetune["finetuned"].get(key) is not None
        }
    if output_dir.exists():
        shutil.rmtree(output_dir)
    nlp.to_disk(output_dir)
    return nlp, tensors, finetune


def _resolved_config(nlp: Language, **paths):
    config = nlp.config.copy()
    for key, value in paths.items():
        if value is not None:
            config["paths"][key] = str(value)
    return config.interpolate()


def _corpus_examples(nlp: Language, which: str, path: Path) -> List:
    if not Path(path).exists():
        raise FileNotFoundError(f"prune: {which} data {path} does not exist")
    return list(_corpus(nlp, which, path)(nlp))


def _corpus(nlp: Language, which: str, path: Path):
    from spacy.util import registry

    config = _resolved_config(nlp, **{which: path})
    # Only this reader: the other one's path may be unset.
    return registry.resolve({"corpus": config["corpora"][which]})["corpus"]


def _dev_scores(nlp: Language, dev: List) -> Dict[str, Optional[float]]:
    """The pipeline's weighted scores (and perplexity) on the dev examples."""
    if not dev:
        return {}
    scores = nlp.evaluate(dev)
    keys = [k for k in nlp.config["training"]["score_weights"]] + ["lm_ppl"]
    out: Dict[str, Optional[float]] = {}
    for key in keys:
        value = scores.get(key)
        if isinstance(value, (int, float)):
            out[key] = float(value)
    return out


def finetune_masked(
    nlp: Language,
    targets: List[_Target],
    masks: List[numpy.ndarray],
    train_data: Path,
    steps: int,
    *,
    learn_rate: float = 0.001,
    seed: int = 0,
) -> List[float]:
    """Train ``steps`` updates, zeroing the masked-out weights after each.

    RETURNS (List[float]): The summed loss of each tenth of the steps.
    """
    import random

    from spacy.util import registry
    from thinc.api import Adam, fix_random_seed

    if not Path(train_data).exists():
        raise FileNotFoundError(f"prune: train data {train_data} does not exist")
    fix_random_seed(seed)
    corpus = _corpus(nlp, "train", train_data)
    T = _resolved_config(nlp)["training"]
    batcher = registry.resolve({"batcher": T["batcher"]})["batcher"]
    dropout = float(T.get("dropout") or 0.0)
    # max_epochs = -1 streams the corpus in order (a language model carries
    # its state from chunk to chunk); otherwise shuffle each epoch, as
    # spacy train does.
    shuffle = T.get("max_epochs", 0) != -1
    frozen = set(T.get("frozen_components") or [])
    optimizer = Adam(learn_rate)
    rng = random.Random(seed)
    examples = list(corpus(nlp))
    if not examples:
        raise ValueError(f"prune: no training examples in {train_data}")
    losses_log: List[float] = []
    chunk = max(1, steps // 10)
    running = 0.0
    step = 0
    with nlp.select_pipes(disable=[n for n in nlp.pipe_names if n in frozen]):
        while step < steps:
            if shuffle:
                rng.shuffle(examples)
            for batch in batcher(examples):
                losses: Dict[str, float] = {}
                nlp.update(batch, drop=dropout, sgd=optimizer, losses=losses)
                for target, mask in zip(targets, masks):
                    target.set(target.get() * mask)
                running += sum(losses.values())
                step += 1
                if step % chunk == 0 or step == steps:
                    losses_log.append(running)
                    running = 0.0
                if step >= steps:
                    break
    return losses_log


def prune_and_report(
    pipeline_dir: Path,
    output_dir: Path,
    sparsity: float = 0.5,
    scope: str = "tensor",
    include_dense: bool = True,
    eval_data: Optional[Path] = None,
    max_eval: int = 0,
    min_seconds: float = 1.0,
    finetune_steps: int = 0,
    train_data: Optional[Path] = None,
    dev_data: Optional[Path] = None,
    finetune_lr: float = 0.001,
) -> Dict:
    """Prune (and optionally fine-tune with the pruned weights held at zero)
    and measure size, speed, accuracy and the sparsity reached."""
    _, tensors, finetune = prune_and_finetune(
        pipeline_dir, output_dir, sparsity, scope, include_dense,
        finetune_steps=finetune_steps, train_data=train_data,
        dev_data=dev_data if dev_data is not None else eval_data, learn_rate=finetune_lr,
    )
    before = spacy.load(pipeline_dir)
    after = spacy.load(output_dir)
    # Re-read from disk: the sparsity that counts is the one that was saved.
    saved = prune_targets_report(find_targets(after, include_dense))
    total = sum(t["size"] for t in saved)
    zeros = sum(t["size"] * t["sparsity"] for t in saved)
    examples = load_examples(before, eval_data, max_eval)
    report: Dict = {
        "command": "prune",
        "input": str(pipeline_dir),
        "output": str(output_dir),
        "scope": scope,
        "include_dense": include_dense,
        "sparsity_requested": sparsity,
        "sparsity_reached": zeros / total if total else 0.0,
        "pruned_weights": int(total),
        "tensors": saved,
    }
    report.update(size_report(pipeline_dir, output_dir))
    report.update(compare_pipelines(before, after, examples, min_seconds=min_seconds))
    if finetune is not None:
        report["finetune"] = finetune
    return report


def prune_targets_report(targets: List[_Target]) -> List[Dict]:
    report = []
    for target in targets:
        value = target.get()
        report.append(
            {"name": target.name, "size": int(value.size), "sparsity": float(numpy.mean(value == 0.0))}
        )
    return report
