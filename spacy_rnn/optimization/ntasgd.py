"""NT-ASGD (Merity et al. 2018, "Regularizing and Optimizing LSTM Language
Models"): plain SGD that switches to averaged SGD once the validation metric
stops improving, and evaluates and saves with the averaged weights.

Inside ``spacy train`` two pieces work together, linked by ``key``:

* the optimizer ``spacy_rnn.NTASGD.v1`` (``[training.optimizer]``): SGD
  steps (optional L2 added to the gradient, as torch's SGD does, and Thinc's
  per-array ``grad_clip``); once triggered, it also keeps the running mean of
  every parameter over the steps taken since the trigger and exposes it as
  ``optimizer.averages``, which spaCy's loop swaps in for every evaluation and
  for saving ``model-last`` / ``model-best``;
* the callback ``spacy_rnn.ntasgd_monitor.v1`` (``[training.before_update]``)
  hands the optimizer each new dev score (spaCy stores it in
  ``nlp.meta["performance"]`` after every evaluation).

The trigger is the paper's non-monotone criterion (Algorithm 1, and
``main.py`` of salesforce/awd-lstm-lm): with the scores of the earlier
evaluations in ``logs``, evaluation ``t`` (0-based) triggers averaging when
``t > nonmono`` and its score is worse than the best of ``logs[:-nonmono]``,
i.e. than every score logged more than ``nonmono`` evaluations before.
With ``nonmono = 2`` and scores 0.5, 0.4, 0.4, 0.4 (higher is better), it
fires at the fourth evaluation.

Averages of torch parameters are stored under both Thinc's ``(id, name)``
key and the key Thinc's stock PyTorch shim reads (``"pytorch_{shim.id}_{name}"``).
spacy-rnn's ``InPlacePyTorchShim.use_params`` reads either and copies the
values in place (Thinc's own loads the state dict strictly, which the
``rnn_lm`` module, with its buffer and tied weight, fails).
"""
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from spacy.language import Language
from spacy.util import registry
from thinc.api import Optimizer
from thinc.types import FloatsXd

from .plateau import new_dev_score

_OPTIMIZERS: Dict[str, "NTASGD"] = {}


def torch_average_key(shim_id: int, name: str) -> str:
    """The key under which Thinc's PyTorch shim looks for a parameter."""
    return f"pytorch_{shim_id}_{name}"


class NTASGD(Optimizer):
    """SGD, then averaged SGD after the non-monotone trigger.

    ``averages`` is None until the trigger (spaCy then evaluates the raw
    weights), afterwards the running means since the trigger.
    """

    def __init__(
        self,
        learn_rate: Any,
        *,
        nonmono: int = 5,
        L2: Any = 0.0,
        grad_clip: Any = 0.0,
        trigger_at: int = -1,
    ):
        if nonmono < 0:
            raise ValueError(f"spacy_rnn.NTASGD.v1: nonmono must be >= 0, got {nonmono}")
        # beta1 = beta2 = 0 selects Thinc's plain SGD step; L2 is added to the
        # gradient (not decoupled weight decay), as in torch.optim.SGD / ASGD.
        super().__init__(
            learn_rate, L2=L2, beta1=0.0, beta2=0.0, eps=1e-8, grad_clip=grad_clip,
            use_averages=False, use_radam=False, L2_is_weight_decay=False,
        )
        self.nonmono = int(nonmono)
        self.logs: List[float] = []
        self.triggered_at: Optional[int] = None  # evaluation index of the trigger
        self.trigger_at_eval = int(trigger_at)
        self.n_averaged: Dict[Tuple[int, str], int] = {}

    @property
    def triggered(self) -> bool:
        return self.triggered_at is not None

    def observe(self, score: float) -> bool:
        """Log one dev score (higher is better); start averaging if the
        non-monotone criterion holds. RETURNS (bool): whether it fired now."""
        t = len(self.logs)
        fire = False
        if not self.triggered:
            if self.trigger_at_eval >= 0:
                fire = t >= self.trigger_at_eval
            else:
                fire = t > self.nonmono and score < max(self.logs[: -self.nonmono or None])
        self.logs.append(float(score))
        if fire:
            self.start_averaging()
        return fire

    def start_averaging(self) -> None:
        """Switch to averaged SGD from the next step on."""
        if not self.triggered:
            self.triggered_at = len(self.logs) - 1 if self.logs else 0
            self.averages = {}
            self.n_averaged = {}

    def __call__(
        self,
        key: Tuple[int, str],
        weights: FloatsXd,
        gradient: FloatsXd,
        *,
        lr_scale: float = 1.0,
    ):
        # Thinc's step would also keep its own moving average in
        # ``averages``: hide the dict from it.
        averages, self.averages = self.averages, None
        try:
            weights, gradient = super().__call__(key, weights, gradient, lr_scale=lr_scale)
        finally:
            self.averages = averages
        if self.averages is not None and len(weights):
            n = self.n_averaged.get(key, 0) + 1
            self.n_averaged[key] = n
            name = key[1] if isinstance(key, tuple) and len(key) == 2 else None
            avg = self.averages.get(key)
            if avg is None:
                avg = weights.copy()
                self.averages[key] = avg
                if isinstance(name, str) and "." in name:
                    # torch parameter names are dotted; Thinc's are not
                    self.averages[torch_average_key(key[0], name)] = avg
            else:
                avg += (weights - avg) / n
        return weights, gradient


@registry.optimizers("spacy_rnn.NTASGD.v1")
def make_ntasgd(
    learn_rate: Any = 20.0,
    nonmono: int = 5,
    L2: Any = 0.0,
    grad_clip: Any = 0.0,
    trigger_at: int = -1,
    key: str = "default",
) -> NTASGD:
    """Non-monotonically triggered averaged SGD (pair it with
    ``spacy_rnn.ntasgd_monitor.v1`` under the same ``key``).

    learn_rate (float or schedule): SGD learning rate (AWD-LSTM: 30 for
        PTB with global-norm clipping at 0.25).
    nonmono (int): Non-monotone interval, in evaluations.
    L2 (float or schedule): L2 penalty added to the gradient.
    grad_clip (float or schedule): Thinc's per-array clipping (0: off; use
        ``spacy_rnn.clip_global_norm.v1`` for the global norm).
    trigger_at (int): Start averaging at this evaluation (0-based) whatever
        the scores; -1 (default) uses the non-monotone criterion.
    key (str): Name that links the optimizer to its monitor.
    RETURNS (NTASGD): The optimizer.
    """
    optimizer = NTASGD(learn_rate, nonmono=nonmono, L2=L2, grad_clip=grad_clip,
                       trigger_at=trigger_at)
    _OPTIMIZERS[key] = optimizer
    return optimizer


@registry.callbacks("spacy_rnn.ntasgd_monitor.v1")
def ntasgd_monitor(key: str = "default") -> Callable[[Language, Dict[str, Any]], None]:
    """``[training.before_update]`` callback that passes each new dev score
    (weighted by ``[training.score_weights]``) to the ``spacy_rnn.NTASGD.v1``
    optimizer with the same ``key``.

    key (str): Name that links the monitor to its optimizer.
    RETURNS (Callable[[Language, Dict[str, Any]], None]): The callback.
    """
    seen: Dict[str, Any] = {"performance": None}

    def before_update(nlp: Language, args: Dict[str, Any]) -> None:
        score = new_dev_score(nlp, seen)
        if score is None:
            return
        optimizer = _OPTIMIZERS.get(key)
        if optimizer is None:
            raise ValueError(
                f"spacy_rnn.ntasgd_monitor.v1: no spacy_rnn.NTASGD.v1 optimizer with "
                f"key {key!r}; set [training.optimizer] to it"
            )
        if optimizer.observe(score):
            from wasabi import msg

            msg.info(
                f"NT-ASGD: averaging from step {args.get('step')} "
                f"(evaluation {optimizer.triggered_at})"
            )

    return before_update


def get_ntasgd(key: str = "default") -> Optional[NTASGD]:
    """The optimizer registered under ``key``, for inspection."""
    return _OPTIMIZERS.get(key)


def swap_torch_params(shim, params: Optional[Dict[Any, Any]]) -> Iterator[None]:
    """Context manager: while open, every parameter of the shim's torch module
    with an entry in ``params`` holds that value (copied in place, so tied
    weights follow); restored afterwards. Parameters without an entry keep
    their weights. (``InPlacePyTorchShim.use_params``.)"""
    return shim.use_params(params or {})
