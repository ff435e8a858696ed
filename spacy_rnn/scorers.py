"""Scorers for spacy-rnn components."""
import math
from typing import Any, Callable, Dict, Iterable

from spacy.training import Example
from spacy.util import registry

LM_SCORE_WEIGHTS = {"lm_score": 1.0, "lm_ppl": None, "lm_loss": None}


def score_lm(examples: Iterable[Example], **kwargs: Any) -> Dict[str, Any]:
    """Corpus-level language-model scores from ``doc._.lm_logprob``.

    Every token of every predicted doc counts once, so the loss is the mean
    negative log-likelihood per token (natural log) over the whole corpus,
    not a mean of per-doc means.

    examples (Iterable[Example]): Examples whose predicted docs went through
        an ``rnn_lm`` component.
    RETURNS (Dict[str, Any]): ``lm_loss`` (mean NLL per token), ``lm_ppl``
        (exp of it), ``lm_score`` (1 / ppl, the geometric-mean probability of
        a token: it rises as perplexity falls, which is what spaCy maximises),
        and ``lm_backward_ppl`` for bidirectional models. None without tokens.
    """
    total = 0.0
    total_bwd = 0.0
    n = 0
    n_bwd = 0
    for eg in examples:
        doc = eg.predicted
        if not len(doc) or not doc.has_extension("lm_logprob"):
            continue
        if doc._.lm_logprob is None:
            continue
        total += float(doc._.lm_logprob)
        n += len(doc)
        if doc.has_extension("lm_backward_logprob") and doc._.lm_backward_logprob is not None:
            total_bwd += float(doc._.lm_backward_logprob)
            n_bwd += len(doc)
    if n == 0:
        return {"lm_loss": None, "lm_ppl": None, "lm_score": None}
    loss = -total / n
    ppl = _safe_exp(loss)
    scores = {"lm_loss": loss, "lm_ppl": ppl, "lm_score": 1.0 / ppl}
    if n_bwd:
        scores["lm_backward_ppl"] = _safe_exp(-total_bwd / n_bwd)
    return scores


@registry.scorers("spacy_rnn.lm_scorer.v1")
def make_lm_scorer() -> Callable[..., Dict[str, Any]]:
    """Scorer of the ``rnn_lm`` component: ``lm_loss``, ``lm_ppl``, ``lm_score``.

    RETURNS (Callable[..., Dict[str, Any]]): ``score_lm``.
    """
    return score_lm


def _safe_exp(x: float) -> float:
    return math.exp(x) if x < 700 else float("inf")
