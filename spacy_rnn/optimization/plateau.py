"""Reduce the learning rate when the dev score stops improving, inside
``spacy train``.

Thinc's schedules are plain iterators that never see a score, and spaCy's
training loop hands the dev score to nobody but the logger. Two small pieces
bridge that: the schedule ``spacy_rnn.plateau.v1`` (the optimiser's
``learn_rate``) yields the current rate of a controller, and the callback
``spacy_rnn.plateau_monitor.v1`` (``[training.before_update]``) feeds the
controller each new dev score, which spaCy stores in
``nlp.meta["performance"]`` after every evaluation. The two meet by ``key``.
"""
from typing import Any, Callable, Dict, Iterator, Optional

from spacy.language import Language
from spacy.util import registry

from .search import weighted_score

_CONTROLLERS: Dict[str, "PlateauController"] = {}


class PlateauController:
    """Tracks the best dev score and scales the rate by ``factor`` after more
    than ``patience`` evaluations without an improvement above ``threshold``.
    """

    def __init__(self, base_rate: float, factor: float, patience: int, min_rate: float, threshold: float):
        if not 0.0 < factor < 1.0:
            raise ValueError(f"spacy_rnn.plateau.v1: factor must be in (0, 1), got {factor}")
        if patience < 0:
            raise ValueError(f"spacy_rnn.plateau.v1: patience must be >= 0, got {patience}")
        self.rate = float(base_rate)
        self.factor = float(factor)
        self.patience = int(patience)
        self.min_rate = float(min_rate)
        self.threshold = float(threshold)
        self.best: Optional[float] = None
        self.bad_evals = 0
        self.reductions = 0

    def observe(self, score: float) -> None:
        if self.best is None or score > self.best + self.threshold:
            self.best = score
            self.bad_evals = 0
            return
        self.bad_evals += 1
        if self.bad_evals > self.patience:
            self.rate = max(self.min_rate, self.rate * self.factor)
            self.reductions += 1
            self.bad_evals = 0


class _RateIterator:
    def __init__(self, controller: PlateauController):
        self.controller = controller

    def __iter__(self) -> "_RateIterator":
        return self

    def __next__(self) -> float:
        return self.controller.rate


@registry.schedules("spacy_rnn.plateau.v1")
def plateau_schedule(
    base_rate: float,
    factor: float = 0.5,
    patience: int = 2,
    min_rate: float = 1e-6,
    threshold: float = 0.0,
    key: str = "default",
) -> Iterator[float]:
    """Learning-rate schedule driven by the dev score (pair it with
    ``spacy_rnn.plateau_monitor.v1`` under the same ``key``).

    base_rate (float): The starting learning rate.
    factor (float): Multiplier applied on a plateau.
    patience (int): Evaluations without improvement tolerated first.
    min_rate (float): The rate never goes below this.
    threshold (float): An improvement must exceed this to count.
    key (str): Name that links the schedule to its monitor.
    RETURNS (Iterator[float]): The schedule.
    """
    controller = PlateauController(base_rate, factor, patience, min_rate, threshold)
    _CONTROLLERS[key] = controller
    return _RateIterator(controller)


@registry.callbacks("spacy_rnn.plateau_monitor.v1")
def plateau_monitor(key: str = "default") -> Callable[[Language, Dict[str, Any]], None]:
    """``[training.before_update]`` callback that passes each new dev score
    to the ``spacy_rnn.plateau.v1`` schedule with the same ``key``.

    key (str): Name that links the monitor to its schedule.
    RETURNS (Callable[[Language, Dict[str, Any]], None]): The callback.
    """
    seen: Dict[str, Any] = {"performance": None}

    def before_update(nlp: Language, args: Dict[str, Any]) -> None:
        score = new_dev_score(nlp, seen)
        if score is None:
            return
        controller = _CONTROLLERS.get(key)
        if controller is None:
            raise ValueError(
                f"spacy_rnn.plateau_monitor.v1: no spacy_rnn.plateau.v1 schedule with "
                f"key {key!r}; set [training.optimizer.learn_rate] to it"
            )
        controller.observe(score)

    return before_update


def new_dev_score(nlp: Language, seen: Dict[str, Any]) -> Optional[float]:
    """The weighted dev score (``[training.score_weights]``) if ``spacy
    train`` has logged a new one since the last call with ``seen``, else None.

    nlp (Language): The pipeline being trained.
    seen (Dict[str, Any]): State kept by the caller between calls.
    RETURNS (Optional[float]): The new score, or None.
    """
    performance = nlp.meta.get("performance")
    # spaCy replaces the dict after every evaluation: a new object is a new
    # dev score.
    if not performance or performance is seen.get("performance"):
        return None
    seen["performance"] = performance
    weights = dict(nlp.config["training"]["score_weights"])
    return weighted_score(performance, weights)


def get_controller(key: str = "default") -> Optional[PlateauController]:
    """The controller behind a plateau schedule, for inspection."""
    return _CONTROLLERS.get(key)
