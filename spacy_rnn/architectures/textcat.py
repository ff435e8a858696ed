from functools import partial
from typing import List, Optional, cast

from spacy.tokens import Doc
from spacy.util import registry
from thinc.api import Dropout, Linear, Logistic, Model, Softmax, chain, resizable
from thinc.layers.resizable import resize_linear_weighted, resize_model
from thinc.types import Floats2d

from ..layers.pooling import rnn_pooling

# Bias of new, untrained classes in an exclusive output layer: matches spaCy,
# so a label added after training starts with ~zero probability.
NEG_VALUE = -5000


@registry.architectures("spacy-rnn.TextCatRNN.v1")
def build_textcat_rnn(
    tok2vec: Model[List[Doc], List[Floats2d]],
    exclusive_classes: bool,
    pooling: str = "mean",
    dropout: float = 0.0,
    nO: Optional[int] = None,
) -> Model[List[Doc], Floats2d]:
    """Text classifier for spaCy's ``textcat`` and ``textcat_multilabel``.

    tok2vec (Model[List[Doc], List[Floats2d]]): Token vectors, typically a
        ``spacy.Tok2Vec.v2`` with a ``spacy-rnn.RNNEncoder.v1`` encoder, or a
        listener to a shared tok2vec.
    exclusive_classes (bool): Softmax over mutually exclusive classes, or an
        independent sigmoid per class (multi-label).
    pooling (str): "mean", "max", "last" or "attention".
    dropout (float): Dropout on the pooled vector.
    nO (Optional[int]): Number of classes, usually inferred from the labels.
    RETURNS (Model[List[Doc], Floats2d]): Class probabilities per doc.
    """
    width = tok2vec.maybe_get_dim("nO")
    if not width:
        raise ValueError(
            "spacy-rnn.TextCatRNN.v1: the tok2vec model must declare its output "
            "width (dimension 'nO'); spacy.Tok2Vec.v2 and spacy.Tok2VecListener.v1 do"
        )
    pool = rnn_pooling(pooling, width)
    pool_width = pool.attrs["pool_width"]
    if exclusive_classes:
        output_layer = Softmax(nO=nO, nI=pool_width)
        fill_defaults = {"b": NEG_VALUE, "W": 0}
    else:
        output_layer = Linear(nO=nO, nI=pool_width)
        fill_defaults = {"b": 0, "W": 0}
    resizable_layer = resizable(
        output_layer,
        resize_layer=partial(resize_linear_weighted, fill_defaults=fill_defaults),
    )
    layers = [tok2vec, pool, Dropout(dropout), resizable_layer]
    if not exclusive_classes:
        layers.append(Logistic())
    model = chain(*layers)
    model.set_ref("tok2vec", tok2vec)
    model.set_ref("output_layer", output_layer)
    if nO is not None:
        model.set_dim("nO", cast(int, nO))
    model.attrs["multi_label"] = not exclusive_classes
    model.attrs["pooling"] = pooling
    model.attrs["resize_output"] = partial(
        _resize_and_set_ref, resizable_layer=resizable_layer
    )
    return model


def _resize_and_set_ref(model: Model, new_nO: int, resizable_layer: Model) -> Model:
    resizable_layer = resize_model(resizable_layer, new_nO)
    model.set_ref("output_layer", resizable_layer.layers[0])
    model.set_dim("nO", new_nO, force=True)
    return model

