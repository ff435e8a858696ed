"""Thinc's CPU matrix products through PyTorch, in torch's own thread pool.

Thinc's ``NumpyOps`` multiplies matrices with its bundled BLIS, on one
thread. On this project's dev VM (AMD EPYC with AVX-512, 2 cores) that BLIS
ran the products of MultiHashEmbed's Maxout in ``rnn_textcat``'s default
model in 2.7x the time of a tuned BLAS on one thread, and those products were
over half of a CPU training step (``benchmarks/profile_textcat.py``,
``benchmarks/cpu_gemm.py``).

``TorchGemmOps`` is ``NumpyOps`` with ``gemm`` done by ``torch.mm`` on
zero-copy views of the numpy arrays, the way thinc-apple-ops swaps in
Apple's Accelerate; every other kernel (Maxout's pieces, hashing, the
optimiser) is unchanged. Why torch and not numpy's own BLAS
(``NumpyOps(use_blis=False)``): numpy's OpenBLAS keeps a second pool of
spinning threads beside torch's OpenMP pool, and the two fought over the
cores between the embedding and the recurrent layers. With 2 threads each,
a 2-core machine trained ``rnn_textcat`` on 8-review batches slower than
with BLIS. torch's products run in the pool the RNN already uses, sized by
``torch.set_num_threads``. Results agree with BLIS to float32 rounding, not
bit for bit.
"""
from typing import Callable, Optional, Union

import numpy
import torch
from spacy.language import Language
from spacy.util import registry
from thinc.api import Model, NumpyOps, Ops


@registry.ops("TorchGemmOps")
class TorchGemmOps(NumpyOps):
    """``NumpyOps`` whose matrix products run in PyTorch (see the module
    docstring). Arrays stay numpy arrays; nothing is copied."""

    name = "torch_gemm"

    def gemm(self, x, y, *, out=None, trans1=False, trans2=False):
        """Matrix product ``op(x) @ op(y)``, as ``NumpyOps.gemm``.

        x (numpy.ndarray): 2d array; transposed first when ``trans1``.
        y (numpy.ndarray): 2d array; transposed first when ``trans2``.
        out (Optional[numpy.ndarray]): Array to overwrite with the result.
        trans1 (bool): Use the transpose of ``x``.
        trans2 (bool): Use the transpose of ``y``.
        RETURNS (numpy.ndarray): The product (``out`` when given).
        """
        if x.ndim != 2 or y.ndim != 2:
            raise ValueError(
                f"gemm needs 2-dimensional arrays, got {x.ndim} and {y.ndim} dimensions"
            )
        if not _torch_can_view(x, y, out):
            # Other dtypes, read-only or negatively strided arrays: numpy's
            # own product, which takes any of them.
            product = Ops.gemm(self, x, y, trans1=trans1, trans2=trans2)
            if out is None:
                return product
            out[...] = product
            return out
        a = torch.from_numpy(x)
        b = torch.from_numpy(y)
        if trans1:
            a = a.T
        if trans2:
            b = b.T
        if out is None:
            return torch.mm(a, b).numpy()
        torch.mm(a, b, out=torch.from_numpy(out))
        return out


_TORCH_GEMM_OPS = TorchGemmOps()


def use_torch_gemm(target: Union[Language, Model]) -> int:
    """Give every layer of a pipeline (or of one model) that runs on Thinc's
    plain ``NumpyOps`` a ``TorchGemmOps`` instead.

    Layers on another backend (CuPy on a GPU, Apple's Accelerate, any other
    subclass of ``NumpyOps``) are left as they are, so this is safe to call
    on any pipeline. Layers created later (``nlp.add_pipe`` afterwards, an
    output layer that ``add_label`` rebuilds) get the default backend.

    target (Union[Language, Model]): A pipeline, or a single model.
    RETURNS (int): The number of layers switched.
    """
    return replace_numpy_ops(target, _TORCH_GEMM_OPS)


def replace_numpy_ops(target: Union[Language, Model], ops: Ops) -> int:
    """Give every layer of a pipeline (or of one model) whose ops object is
    Thinc's plain ``NumpyOps`` the given ops object instead.

    target (Union[Language, Model]): A pipeline, or a single model.
    ops (Ops): The replacement, a CPU backend.
    RETURNS (int): The number of layers switched.
    """
    if isinstance(target, Language):
        models = [getattr(pipe, "model", None) for _, pipe in target.components]
    else:
        models = [target]
    switched = 0
    for model in models:
        if not isinstance(model, Model):
            continue
        for node in model.walk():
            if type(node.ops) is NumpyOps and node.ops is not ops:
                node.ops = ops
                switched += 1
    return switched


@registry.callbacks("spacy_rnn.torch_gemm.v1")
def make_torch_gemm_callback(
    then: Optional[Callable[[Language], Language]] = None,
) -> Callable[[Language], Language]:
    """Callback for ``[nlp.after_pipeline_creation]`` that calls
    ``use_torch_gemm`` on the new pipeline. spaCy runs that slot when
    training creates the pipeline and again whenever ``spacy.load`` loads
    it, so a trained or packaged pipeline keeps the setting.

    then (Optional[Callable[[Language], Language]]): Another callback to run
        afterwards, since spaCy takes only one per slot.
    RETURNS (Callable[[Language], Language]): The callback.
    """

    def callback(nlp: Language) -> Language:
        use_torch_gemm(nlp)
        return then(nlp) if then is not None else nlp

    return callback


def _torch_can_view(*arrays) -> bool:
    for array in arrays:
        if array is None:
            continue
        if (
            not isinstance(array, numpy.ndarray)
            or array.dtype != numpy.float32
            or not array.flags.writeable
            or any(s < 0 for s in array.strides)
        ):
            return False
    return True
