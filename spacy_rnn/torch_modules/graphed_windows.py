"""Language-model windows (training and evaluation) replayed as CUDA graphs.

A word-level LSTM LM at the sizes people train on PTB (2x200, 20 streams x
35 tokens) gives the GPU about 4 ms of work per step, while launching that
work one kernel at a time (about 500 launches, two cuDNN calls per layer)
costs the host more than that: on an H100 both ``rnn_lm`` and a plain
PyTorch loop were bound by host time, the GPU busy for under half of each
step. A CUDA graph records a window's forward and backward kernels once and
replays each with one launch, so the host only prepares the batch and steps
the optimiser.

``torch.cuda.make_graphed_callables`` does the capture (a forward graph and a
backward graph sharing one memory pool, wrapped in an autograd function), so
the loss still goes through ``backward`` and the gradients still land in
``.grad``. What it needs, and what this module checks, is that every replay
sees the same shapes and the same parameter storage; anything else runs
eagerly. Plain PyTorch: nothing here imports spaCy.
"""
import warnings
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

# Graphs kept per model; each holds a private memory pool of one window's
# activations, so a stream of ever-new shapes must not capture forever.
MAX_GRAPHS = 4


class GraphedWindows:
    """Replays full-softmax training and evaluation windows of an
    ``RNNLanguageModel``.

    A shape is captured the second time it is seen, so a one-off batch (the
    short last batch of an epoch) never pays for a capture. If capturing
    fails, a warning says why and every later window runs eagerly.
    """

    def __init__(self):
        self._graphs: Dict[Tuple, object] = {}
        self._seen: Dict[Tuple, int] = {}
        self._params_key: Optional[Tuple[int, ...]] = None
        self.disabled = False

    def __getstate__(self):
        # Graphs hold device memory and closures: a pickled or deep-copied
        # pipeline (multiprocessing, copy.deepcopy(nlp)) starts without them
        # and captures its own.
        return {"disabled": self.disabled}

    def __setstate__(self, state) -> None:
        self.__init__()
        self.disabled = state.get("disabled", False)

    def applies_to(self, device: torch.device) -> bool:
        """Whether windows on ``device`` may be replayed at all.

        device (torch.device): The module's device.
        RETURNS (bool): True on CUDA unless a capture has failed.
        """
        return not self.disabled and device.type == "cuda"

    def clear(self) -> None:
        """Drop every graph (the module's parameters were replaced)."""
        self._graphs.clear()
        self._seen.clear()
        self._params_key = None

    def step(
        self,
        lm: nn.Module,
        direction: str,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        state,
        norm: float,
    ):
        """Run one training window through a graph, if one applies.

        lm (nn.Module): The ``RNNLanguageModel``, in training mode.
        direction (str): "fwd" or "bwd".
        inputs (torch.Tensor): (batch, time) int64 input ids on the GPU.
        targets (torch.Tensor): (batch, time) int64 target ids.
        state: The carried recurrent state (None: run eagerly).
        norm (float): The loss divisor.
        RETURNS (Optional[Tuple[torch.Tensor, list]]): The loss (backpropagate
            it as usual) and the new, detached state; None when this window
            must run eagerly.
        """
        if self.disabled or state is None or inputs.device.type != "cuda":
            return None
        # A graph writes its gradients into storage of its own; they can only
        # stand in for .grad when nothing is waiting there to be added to
        # (a second window or a second batch before the optimiser step).
        if any(p.grad is not None for p in lm.parameters()):
            return None
        flat, layout = _flatten(state)
        # The word count is baked into a capture (the mask of unused rows).
        key = self._key(lm, "train", direction, inputs, (float(norm), lm.n_words), flat, layout)
        graphed = self._graph_for(
            key, lambda: self._capture(lm, direction, norm, layout, inputs, targets, flat)
        )
        if graphed is None:
            return None
        outputs = graphed(inputs, targets, *flat)
        return outputs[0], _unflatten(outputs[1:], layout)

    def score(self, lm: nn.Module, direction: str, inputs: torch.Tensor,
              targets: torch.Tensor, state):
        """Score one evaluation window through a graph, if one applies. The
        arguments are ``step``'s, without ``norm``; ``lm`` is in eval mode,
        under ``torch.no_grad``.

        RETURNS (Optional[Tuple[torch.Tensor, list]]): The (batch * time,)
            target log probabilities (a copy the caller may keep) and the new
            state (valid until the next replay); None when this window must
            run eagerly.
        """
        if (
            self.disabled or state is None or inputs.device.type != "cuda"
            or lm.training or torch.is_grad_enabled()
        ):
            return None
        flat, layout = _flatten(state)
        key = self._key(lm, "eval", direction, inputs, lm.n_words, flat, layout)
        graph = self._graph_for(
            key, lambda: self._capture_scoring(lm, direction, layout, inputs, targets, flat)
        )
        if graph is None:
            return None
        return graph(inputs, targets, flat, layout)

    def _key(self, lm, kind, direction, inputs, extra, flat, layout) -> Tuple:
        # Graphs read parameters by address: new storage means new graphs.
        params_key = tuple(p.data_ptr() for p in lm.parameters())
        if params_key != self._params_key:
            self.clear()
            self._params_key = params_key
        return (kind, direction, tuple(inputs.shape), extra, layout,
                tuple((t.shape, t.dtype) for t in flat))

    def _graph_for(self, key, capture):
        # A shape is captured on its second sighting; at most MAX_GRAPHS live.
        graph = self._graphs.get(key)
        if graph is None:
            self._seen[key] = self._seen.get(key, 0) + 1
            if self._seen[key] < 2 or len(self._graphs) >= MAX_GRAPHS:
                return None
            graph = capture()
            if graph is not None:
                self._graphs[key] = graph
        return graph

    def _capture_scoring(self, lm, direction, layout, inputs, targets, flat):
        try:
            return _ScoringGraph(lm, direction, layout, inputs, targets, flat)
        except Exception as err:  # noqa: BLE001 - any failure means: run eagerly
            self._give_up(err)
            return None

    def _give_up(self, err: Exception) -> None:
        self.disabled = True
        self.clear()
        warnings.warn(
            f"spacy-rnn: capturing a language-model window as a CUDA graph "
            f"failed ({type(err).__name__}: {err}); the model goes on without "
            f"graphs. Set cuda_graphs = false in the rnn_lm config to skip "
            f"the attempt.",
            stacklevel=4,
        )

    def _capture(self, lm, direction, norm, layout, inputs, targets, flat):
        window = _Window(lm, direction, norm, layout)
        sample = (inputs.clone(), targets.clone(), *[t.clone() for t in flat])
        # The capture's own autograd nodes stay alive inside the graphed
        # function, recorded on the capture's side stream, so backward passes
        # on the main stream make torch warn that the parameters' gradient
        # accumulators sit on another stream. That is how
        # make_graphed_callables works, not something the caller did; the
        # cost is one event wait per replay.
        warnings.filterwarnings(
            "ignore", message="The AccumulateGrad node's stream does not match",
            category=UserWarning,
        )
        try:
            graphed = torch.cuda.make_graphed_callables(window, sample)
        except Exception as err:  # noqa: BLE001 - any failure means: run eagerly
            self._give_up(err)
            return None
        return graphed


class _ScoringGraph:
    # One evaluation window (no gradients) captured with torch.cuda.graph:
    # static input, target and state buffers in, log probabilities and the
    # new state out.
    def __init__(self, lm, direction, layout, inputs, targets, flat):
        self.inputs = inputs.clone()
        self.targets = targets.clone()
        self.state = [t.clone() for t in flat]

        def run():
            H, new_state = lm.run(direction, self.inputs, _unflatten(self.state, layout))
            lp = lm.target_log_probs(H.reshape(-1, H.shape[-1]), self.targets.reshape(-1))
            return lp, _flatten(new_state)[0]

        # Warm-up on a side stream, as torch's capture recipe asks: cuDNN and
        # the allocator settle before anything is recorded.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                run()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.lp, self.new_state = run()

    def __call__(self, inputs, targets, flat, layout):
        self.inputs.copy_(inputs)
        self.targets.copy_(targets)
        for static, given in zip(self.state, flat):
            # The previous replay's output state is read before it is
            # overwritten: the copy is queued ahead of the replay.
            if static.data_ptr() != given.data_ptr():
                static.copy_(given)
        self.graph.replay()
        return self.lp.clone(), _unflatten(self.new_state, layout)


class _Window(nn.Module):
    # The captured computation: one window's loss and the state after it.
    # The LM is a submodule so that make_graphed_callables returns gradients
    # for its parameters.
    def __init__(self, lm: nn.Module, direction: str, norm: float, layout: Tuple[int, ...]):
        super().__init__()
        self.lm = lm
        self.direction = direction
        self.norm = float(norm)
        self.layout = layout

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor, *flat: torch.Tensor):
        state = _unflatten(flat, self.layout)
        H, new_state = self.lm.run(self.direction, inputs, state)
        nll = self.lm.target_nll_sum(H.reshape(-1, H.shape[-1]), targets.reshape(-1))
        # The state leaves detached: truncated BPTT never backpropagates
        # through it, and outputs that need no gradient cost the backward
        # graph nothing.
        new_flat, _ = _flatten(new_state)
        return (nll / self.norm, *[t.detach() for t in new_flat])


def _flatten(state) -> Tuple[List[torch.Tensor], Tuple[int, ...]]:
    # Per-layer state: a tensor (GRU, RNN) or an (h, c) tuple (LSTM).
    flat: List[torch.Tensor] = []
    layout = []
    for layer in state:
        if isinstance(layer, torch.Tensor):
            flat.append(layer)
            layout.append(1)
        else:
            flat.extend(layer)
            layout.append(len(layer))
    return flat, tuple(layout)


def _unflatten(flat, layout: Tuple[int, ...]) -> list:
    state = []
    i = 0
    for n in layout:
        state.append(flat[i] if n == 1 else tuple(flat[i : i + n]))
        i += n
    return state
