from typing import List, Optional

from spacy.util import registry
from thinc.api import Model, PyTorchGradScaler
from thinc.types import Floats2d

from ..layers.quantized_encoder import QuantizedRNNEncoder


@registry.architectures("spacy-rnn.QuantizedRNNEncoder.v1")
def build_quantized_rnn_encoder(
    width: int,
    depth: int = 1,
    cell: str = "lstm",
    bidirectional: bool = True,
    dropout: float = 0.0,
    residual: bool = False,
    layer_norm: bool = False,
    init: str = "orthogonal",
    method: str = "auto",
    locked_dropout: bool = False,
    input_dropout: float = 0.0,
    output_dropout: float = 0.0,
    weight_drop: float = 0.0,
    mixed_precision: bool = False,
    grad_scaler: Optional[PyTorchGradScaler] = None,
) -> Model[List[Floats2d], List[Floats2d]]:
    """Inference-only, int8 version of ``spacy-rnn.RNNEncoder.v1``, written
    by ``python -m spacy_rnn quantize``.

    Takes the same settings as ``spacy-rnn.RNNEncoder.v1``, so a config is
    converted by changing the architecture name alone. LSTM and GRU weights
    are stored as int8 with one scale per row and run with PyTorch's dynamic
    int8 kernels on CPU; plain RNN cells stay float. It loads either int8
    weights or the float weights of ``spacy-rnn.RNNEncoder.v1`` (quantised
    on load). Training through it is refused.

    width (int): Input and output width.
    depth (int): Number of stacked recurrent layers.
    cell (str): "lstm", "gru", "rnn_tanh" or "rnn_relu".
    bidirectional (bool): Add a right-to-left direction to every layer.
    dropout (float): Unused at inference; kept so configs match.
    residual (bool): Add each layer's input to its output.
    layer_norm (bool): Layer-normalise each layer's output.
    init (str): Unused once weights are loaded; kept so configs match.
    method (str): "reverse", "packed" or "auto".
    locked_dropout (bool): Unused at inference; kept so configs match.
    input_dropout (float): Unused at inference; kept so configs match.
    output_dropout (float): Unused at inference; kept so configs match.
    weight_drop (float): Unused at inference; kept so configs match.
    mixed_precision (bool): Ignored: int8 inference runs on CPU.
    grad_scaler (Optional[PyTorchGradScaler]): Ignored.
    RETURNS (Model[List[Floats2d], List[Floats2d]]): The encoder.
    """
    return QuantizedRNNEncoder(
        width=width,
        depth=depth,
        cell=cell,
        bidirectional=bidirectional,
        dropout=dropout,
        residual=residual,
        layer_norm=layer_norm,
        init=init,
        method=method,
    )
