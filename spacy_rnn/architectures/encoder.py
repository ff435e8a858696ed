from typing import List, Optional

from spacy.util import registry
from thinc.api import Model, PyTorchGradScaler
from thinc.types import Floats2d

from ..layers.rnn_encoder import RNNEncoder


@registry.architectures("spacy-rnn.RNNEncoder.v1")
def build_rnn_encoder(
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
    """Recurrent encoder for spaCy's Tok2Vec ``encode`` slot.

    Each doc is encoded on its own terms: its outputs are the same (up to
    float rounding) whether it is encoded alone or batched with longer docs,
    in both directions. Batches are split into buckets of similar length to
    cut padded computation.

    width (int): Input and output width; each direction gets half of it when
        ``bidirectional`` is set, so it must then be even.
    depth (int): Number of stacked recurrent layers.
    cell (str): "lstm", "gru", "rnn_tanh" or "rnn_relu".
    bidirectional (bool): Add a right-to-left direction to every layer.
    dropout (float): Dropout between recurrent layers.
    residual (bool): Add each layer's input to its output.
    layer_norm (bool): Layer-normalise each layer's output.
    init (str): "orthogonal" (recurrent weights orthogonal per gate, input
        weights Xavier), "xavier", "kaiming", or "default" (PyTorch's own).
        All but "default" set the LSTM forget-gate bias to 1.
    method (str): "reverse", "packed" or "auto" (the faster exact method for
        the device).
    locked_dropout (bool): One dropout mask per doc for all its tokens
        (variational dropout) instead of a new mask per token.
    input_dropout (float): Dropout on the encoder's input vectors.
    output_dropout (float): Dropout on the encoder's output vectors.
    weight_drop (float): DropConnect rate on the hidden-to-hidden weights.
    mixed_precision (bool): Run the recurrent layers under autocast: float16
        with loss scaling on CUDA, bfloat16 on CPU.
    grad_scaler (Optional[PyTorchGradScaler]): Gradient scaler for mixed
        precision.
    RETURNS (Model[List[Floats2d], List[Floats2d]]): The encoder.
    """
    return RNNEncoder(
        width=width,
        depth=depth,
        cell=cell,
        bidirectional=bidirectional,
        dropout=dropout,
        residual=residual,
        layer_norm=layer_norm,
        init=init,
        method=method,
        locked_dropout=locked_dropout,
        input_dropout=input_dropout,
        output_dropout=output_dropout,
        weight_drop=weight_drop,
        mixed_precision=mixed_precision,
        grad_scaler=grad_scaler,
    )
