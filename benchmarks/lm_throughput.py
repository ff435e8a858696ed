"""Training and evaluation tokens/s of the ``rnn_lm`` component against a
plain PyTorch word-level LSTM language model of identical size, timed in the
same run.

    python benchmarks/lm_throughput.py --data ../shared/data/ptb --seconds 60

Both sides: 10k vocabulary, 200-wide embeddings, a 2-layer 200-wide LSTM,
untied full softmax, dropout 0.2, BPTT 35 over 20 parallel streams of
ptb.train.txt, Adam (lr 0.001) with gradient clipping at 0.25, one optimiser
step per 35-token window. The plain loop is pytorch/examples'
word_language_model with Adam and global-norm clipping; ``rnn_lm`` clips the
same way through ``spacy_rnn.clip_global_norm.v1`` (``--rnn-lm-clip
per-tensor``: Thinc's own ``grad_clip`` instead, each tensor's norm on its
own, as the figures before 2026-11-23 were taken). ``rnn_lm`` is fed the way
``spacy train`` feeds it (``spacy-rnn.TokenStreamCorpus.v1`` docs, one
``nlp.update`` per window). The two sides take turns (``--rounds``) so that
load from other processes hits both alike. Evaluation: 10 streams over
ptb.valid.txt (first ``--max-eval-tokens`` tokens), no gradients, best of
``--rounds`` alternating passes.

``--cell gru`` (or ``rnn_tanh``) swaps the LSTM for a GRU (an Elman RNN) on
both sides: ``nn.GRU`` in the plain loop, ``rnn_lm``'s ``cell`` setting on
the other, which runs spacy-rnn's fused CPU loop in training (``--rnn-kernel
torch``: ``nn.GRU`` there too).

``--mixed-precision`` runs both sides under ``torch.autocast``: float16 with
a gradient scaler on CUDA (``torch.amp.GradScaler`` for the plain loop,
Thinc's ``PyTorchGradScaler`` inside ``rnn_lm``), bfloat16 on CPU.
"""
import contextlib
import argparse
import math
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

# rnn_lm updates timed together (see SpacyRNNSide.train_for).
STEPS_PER_TIMING = 10

SIZES = dict(vocab_size=10000, embed_width=200, hidden_width=200, depth=2, bptt=35,
             n_streams=20, eval_streams=10, dropout=0.2, learn_rate=0.001, clip=0.25)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=_common.DEFAULT_PTB,
                   help="folder with ptb.train.txt and ptb.valid.txt")
    p.add_argument("--seconds", type=float, default=60.0,
                   help="training time per implementation")
    p.add_argument("--rounds", type=int, default=3,
                   help="alternate the two implementations this many times")
    p.add_argument("--max-train-tokens", type=int, default=0,
                   help="use only the first N training tokens (0: all)")
    p.add_argument("--max-eval-tokens", type=int, default=20000,
                   help="evaluate on the first N validation tokens (0: all)")
    p.add_argument("--vocab-size", type=int, default=SIZES["vocab_size"])
    p.add_argument("--width", type=int, default=SIZES["hidden_width"],
                   help="embedding and LSTM width")
    p.add_argument("--cell", choices=["lstm", "gru", "rnn_tanh"], default="lstm",
                   help="the recurrent cell on both sides (nn.LSTM / nn.GRU / nn.RNN)")
    p.add_argument("--mixed-precision", action="store_true",
                   help="autocast both sides (float16 + loss scaling on CUDA, bfloat16 on CPU)")
    p.add_argument("--rnn-lm-clip", choices=["global", "per-tensor"], default="global",
                   help="rnn_lm's clipping: the global norm as the plain loop does "
                        "(spacy_rnn.clip_global_norm.v1), or Thinc's per-tensor grad_clip")
    p.add_argument("--rnn-lm-cuda-graphs", choices=["on", "off"], default="on",
                   help="rnn_lm's cuda_graphs setting (its default: on; applies on a GPU only)")
    p.add_argument("--rnn-lm-fused-loss", choices=["on", "off"], default="on",
                   help="rnn_lm's fused_loss setting (its default: on; applies on CPU "
                        "with the full softmax in float32)")
    p.add_argument("--torch-cuda-graphs", action="store_true",
                   help="also replay the plain loop's forward and backward as CUDA "
                        "graphs (torch.cuda.make_graphed_callables); off by default, "
                        "as in pytorch/examples")
    _common.add_rnn_kernel_arg(p)
    _common.add_common_args(p)
    return p.parse_args(argv)


def autocast(device, enabled):
    import torch

    if not enabled:
        return contextlib.nullcontext()
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype)


def read_tokens(path: Path, limit: int = 0):
    tokens = []
    with Path(path).open(encoding="utf8") as f:
        for line in f:
            tokens.extend(line.split())
            tokens.append("<eos>")
            if limit and len(tokens) >= limit:
                return tokens[:limit]
    return tokens


class TorchSide:
    """pytorch/examples word_language_model (untied; LSTM, GRU or RNN_TANH),
    with Adam."""

    def __init__(self, args, train_tokens, device):
        import torch
        from torch import nn

        self.torch = torch
        self.device = device
        self.args = args
        counts = {}
        for t in train_tokens:
            counts[t] = counts.get(t, 0) + 1
        words = ["<unk>", "<eos>"] + [
            w for w in sorted(counts, key=lambda w: (-counts[w], w)) if w not in ("<unk>", "<eos>")
        ]
        self.ids = {w: i for i, w in enumerate(words[: args.vocab_size])}
        V, W = args.vocab_size, args.width
        self.cell = getattr(args, "cell", "lstm")
        rnn_class = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn_tanh": nn.RNN}[self.cell]

        class RNNModel(nn.Module):
            def __init__(self):
                super().__init__()
                self.drop = nn.Dropout(SIZES["dropout"])
                self.encoder = nn.Embedding(V, W)
                self.rnn = rnn_class(W, W, SIZES["depth"], dropout=SIZES["dropout"])
                self.decoder = nn.Linear(W, V)
                nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
                nn.init.zeros_(self.decoder.bias)
                nn.init.uniform_(self.decoder.weight, -0.1, 0.1)

            def forward(self, x, hidden):
                emb = self.drop(self.encoder(x))
                out, hidden = self.rnn(emb, hidden)
                return self.decoder(self.drop(out)), hidden

        self.model = RNNModel().to(device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=SIZES["learn_rate"])
        self.criterion = nn.CrossEntropyLoss()
        self.scaler = torch.amp.GradScaler(
            "cuda", enabled=bool(args.mixed_precision) and device.type == "cuda")
        self.train_data = self.batchify(train_tokens, SIZES["n_streams"])
        self.position = 0
        self.hidden = None
        self.graphed = None
        self.use_graphs = (getattr(args, "torch_cuda_graphs", False) and device.type == "cuda"
                           and not args.mixed_precision)

    def batchify(self, tokens, n):
        torch = self.torch
        ids = torch.tensor([self.ids.get(t, 0) for t in tokens], dtype=torch.long)
        nbatch = ids.size(0) // n
        return ids[: nbatch * n].view(n, -1).t().contiguous().to(self.device)

    @staticmethod
    def repackage(h):
        if h is None:
            return None
        if isinstance(h, tuple):
            return tuple(v.detach() for v in h)
        return h.detach()

    def train_for(self, seconds):
        """Train for ``seconds``; return (tokens, seconds spent)."""
        torch = self.torch
        self.model.train()
        bptt, V = SIZES["bptt"], self.args.vocab_size
        tokens = 0
        start = _common.timer(self.device)
        end = start + seconds
        while True:
            if self.position + 1 >= self.train_data.size(0) - 1:
                self.position, self.hidden = 0, None
            i = self.position
            seq_len = min(bptt, self.train_data.size(0) - 1 - i)
            data = self.train_data[i : i + seq_len]
            targets = self.train_data[i + 1 : i + 1 + seq_len].reshape(-1)
            self.hidden = self.repackage(self.hidden)
            self.optimizer.zero_grad()
            if self.use_graphs and seq_len == bptt:
                loss, self.hidden = self.graphed_step(data, targets)
            else:
                with autocast(self.device, self.args.mixed_precision):
                    output, self.hidden = self.model(data, self.hidden)
                    loss = self.criterion(output.view(-1, V).float(), targets)
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), SIZES["clip"])
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.position += seq_len
            tokens += data.numel()
            if time.perf_counter() >= end:
                break
        self.last_loss = float(loss.detach())
        return tokens, _common.timer(self.device) - start

    def graphed_step(self, data, targets):
        # Forward and backward replayed as CUDA graphs; a missing state is
        # zeros, which is what the torch modules assume for None. The graph
        # takes the state as a tuple of tensors ((h, c) for an LSTM, (h,)
        # otherwise).
        torch, nn = self.torch, self.torch.nn
        lstm = self.cell == "lstm"
        if self.hidden is None:
            shape = (SIZES["depth"], data.shape[1], self.args.width)
            zeros = tuple(torch.zeros(shape, device=self.device) for _ in range(1 + lstm))
            self.hidden = zeros if lstm else zeros[0]
        state = self.hidden if lstm else (self.hidden,)
        if self.graphed is None:
            model, criterion, V = self.model, self.criterion, self.args.vocab_size

            class Step(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.model = model

                def forward(self, x, y, *state):
                    output, state = self.model(x, state if lstm else state[0])
                    state = state if lstm else (state,)
                    return (criterion(output.view(-1, V), y), *[v.detach() for v in state])

            sample = (data.clone(), targets.clone(), *[t.clone() for t in state])
            self.graphed = torch.cuda.make_graphed_callables(Step(), sample)
        loss, *state = self.graphed(data, targets, *state)
        return loss, (tuple(state) if lstm else state[0])

    def evaluate(self, tokens):
        torch = self.torch
        data = self.batchify(tokens, SIZES["eval_streams"])
        self.model.eval()
        bptt, V = SIZES["bptt"], self.args.vocab_size
        total, n = 0.0, 0
        hidden = None
        start = _common.timer(self.device)
        with torch.no_grad(), autocast(self.device, self.args.mixed_precision):
            for i in range(0, data.size(0) - 1, bptt):
                seq_len = min(bptt, data.size(0) - 1 - i)
                x = data[i : i + seq_len]
                y = data[i + 1 : i + 1 + seq_len].reshape(-1)
                output, hidden = self.model(x, hidden)
                total += float(self.criterion(output.view(-1, V).float(), y)) * y.numel()
                n += y.numel()
        elapsed = _common.timer(self.device) - start
        return n, elapsed, total / n


class SpacyRNNSide:
    """The ``rnn_lm`` component, driven as ``spacy train`` drives it."""

    def __init__(self, args, train_path, device):
        import spacy
        from thinc.api import Adam

        from spacy_rnn.corpus.token_stream import TokenStreamCorpus

        if device.type == "cuda":
            spacy.require_gpu(device.index or 0)
        self.device = device
        self.nlp = spacy.blank("en")
        self.lm = self.nlp.add_pipe("rnn_lm", config={
            "vocab_size": args.vocab_size, "embed_width": args.width,
            "hidden_width": args.width, "depth": SIZES["depth"],
            "cell": getattr(args, "cell", "lstm"),
            "bidirectional": False, "dropout": SIZES["dropout"], "tied": False,
            "softmax": "full", "bptt": SIZES["bptt"],
            "mixed_precision": bool(args.mixed_precision),
            "cuda_graphs": getattr(args, "rnn_lm_cuda_graphs", "on") == "on",
            "fused_loss": getattr(args, "rnn_lm_fused_loss", "on") == "on",
        })
        _common.apply_rnn_kernel(self.nlp, args)
        self.corpus = TokenStreamCorpus(
            train_path, n_streams=SIZES["n_streams"], doc_length=SIZES["bptt"],
            limit=args.max_train_tokens)
        self.lm.initialize(lambda: iter([]), nlp=self.nlp, vocab_path=str(train_path))
        per_tensor = getattr(args, "rnn_lm_clip", "global") == "per-tensor"
        if not per_tensor:
            # What a config's [initialize.after_init] callback does.
            from spacy_rnn.optimization.global_norm import make_clip_global_norm_callback

            make_clip_global_norm_callback(SIZES["clip"], ["rnn_lm"])(self.nlp)
        self.optimizer = Adam(learn_rate=SIZES["learn_rate"],
                              grad_clip=SIZES["clip"] if per_tensor else 0.0,
                              L2=0.0, use_averages=False)
        self.batches = self._batches()

    def _batches(self):
        while True:
            batch = []
            for eg in self.corpus(self.nlp):
                batch.append(eg)
                if len(batch) == SIZES["n_streams"]:
                    yield batch
                    batch = []

    def train_for(self, seconds):
        tokens = 0
        spent = 0.0
        losses = {}
        updates = 0
        while spent < seconds:
            # Doc creation is the reader's job, outside the timed updates. A
            # chunk of batches is read first and its updates are timed
            # together, so a GPU is drained once per chunk, as the plain loop's
            # is once per call, and not after every step.
            chunk = [next(self.batches) for _ in range(STEPS_PER_TIMING)]
            start = _common.timer(self.device)
            for batch in chunk:
                self.nlp.update(batch, sgd=self.optimizer, losses=losses)
            spent += _common.timer(self.device) - start
            tokens += sum(len(eg.predicted) for batch in chunk for eg in batch)
            updates += len(chunk)
        # Mean training loss per token over the round's updates.
        self.last_loss = losses.get("rnn_lm", 0.0) / max(1, updates)
        return tokens, spent

    def evaluate(self, tokens):
        start = _common.timer(self.device)
        scores = self.lm.evaluate_stream(tokens, batch_size=SIZES["eval_streams"],
                                         bptt=SIZES["bptt"])
        elapsed = _common.timer(self.device) - start
        return scores["tokens"], elapsed, scores["nll"]


def main(argv=None):
    args = parse_args(argv)
    _common.quiet_stdout()
    threads = _common.setup_threads(args.threads, getattr(args, "keep_freed_memory", False))
    import torch

    device = _common.torch_device(args.gpu_id)
    torch.manual_seed(args.seed)
    train_path = Path(args.data) / "ptb.train.txt"
    valid_path = Path(args.data) / "ptb.valid.txt"
    train_tokens = read_tokens(train_path, args.max_train_tokens)
    eval_tokens = read_tokens(valid_path, args.max_eval_tokens)

    sides = {"torch": TorchSide(args, train_tokens, device)}
    spacy_error = None
    try:
        from spacy.language import Language

        import spacy_rnn  # noqa: F401

        if not Language.has_factory("rnn_lm"):
            spacy_error = "rnn_lm not installed"
    except Exception as err:
        spacy_error = f"rnn_lm not installed ({type(err).__name__}: {err})"
    if spacy_error is None:
        try:
            sides["spacy_rnn"] = SpacyRNNSide(args, train_path, device)
        except Exception as err:  # report, and still time the plain side
            spacy_error = f"rnn_lm could not be set up: {type(err).__name__}: {err}"

    train = {name: [0, 0.0] for name in sides}
    round_rates = {name: [] for name in sides}
    # Minor page faults per step: large buffers handed back to the kernel
    # and faulted in again (see --keep-freed-memory).
    round_faults = {name: [] for name in sides}
    # Training loss at the end of each round (rnn_lm: the round's mean; the
    # plain loop: its last batch's), so a run that ends with a poor
    # perplexity shows whether and when it diverged.
    round_losses = {name: [] for name in sides}
    step_tokens = SIZES["n_streams"] * SIZES["bptt"]
    for _ in range(max(1, args.rounds)):
        for name, side in sides.items():
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            n, t = side.train_for(args.seconds / max(1, args.rounds))
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
            train[name][0] += n
            train[name][1] += t
            round_rates[name].append(n / t)
            round_faults[name].append(round(faults / max(1.0, n / step_tokens)))
            round_losses[name].append(round(float(side.last_loss), 4))
    # Evaluation also alternates; the fastest pass of each side counts.
    evals = {}
    for _ in range(max(1, args.rounds)):
        for name, side in sides.items():
            n, t, nll = side.evaluate(eval_tokens)
            if name not in evals or t < evals[name][1]:
                evals[name] = (n, t, nll)

    def rate(d, name):
        return d[name][0] / d[name][1] if name in d else None

    result = {
        "benchmark": "lm_throughput",
        **_common.machine_info(threads, device),
        "cell": args.cell,
        # The fused CPU loops run GRU and Elman layers only, and only on CPU.
        "rnn_kernel": args.rnn_kernel if args.cell != "lstm" and device.type == "cpu" else None,
        "mixed_precision": bool(args.mixed_precision),
        "rnn_lm_clip": args.rnn_lm_clip,
        "rnn_lm_cuda_graphs": args.rnn_lm_cuda_graphs,
        "rnn_lm_fused_loss": args.rnn_lm_fused_loss,
        "torch_cuda_graphs": bool(args.torch_cuda_graphs),
        "sizes": {**SIZES, "vocab_size": args.vocab_size, "embed_width": args.width,
                  "hidden_width": args.width},
        "rnn_lm_steps_per_timing": STEPS_PER_TIMING,
        "train_seconds_each": {k: v[1] for k, v in train.items()},
        "minor_page_faults_per_step_per_round": round_faults,
        "train_loss_per_round": round_losses,
        "train_tokens_each": {k: v[0] for k, v in train.items()},
        "eval_tokens": evals["torch"][0],
        "spacy_rnn_train_tokens_per_s": rate(train, "spacy_rnn"),
        "torch_train_tokens_per_s": rate(train, "torch"),
        "spacy_rnn_eval_tokens_per_s": rate(evals, "spacy_rnn"),
        "torch_eval_tokens_per_s": rate(evals, "torch"),
        "spacy_rnn_valid_ppl": math.exp(evals["spacy_rnn"][2]) if "spacy_rnn" in evals else None,
        "torch_valid_ppl": math.exp(evals["torch"][2]),
        "spacy_rnn_error": spacy_error,
        "gpu_peak_mb": _common.gpu_peak_mb(device),
        "peak_rss_mb": _common.peak_rss_mb(),
    }
    s, t = result["spacy_rnn_train_tokens_per_s"], result["torch_train_tokens_per_s"]
    result["train_ratio"] = s / t if s else None
    # Each round's two sides ran back to back, so a slow spell of a shared
    # machine hits one round's pair rather than one side: the median of the
    # per-round ratios is the steadier figure on a noisy VM.
    if "spacy_rnn" in round_rates:
        pairs = [a / b for a, b in zip(round_rates["spacy_rnn"], round_rates["torch"])]
        result["train_ratio_per_round"] = [round(r, 3) for r in pairs]
        result["train_ratio_median_of_rounds"] = statistics.median(pairs)
    s, t = result["spacy_rnn_eval_tokens_per_s"], result["torch_eval_tokens_per_s"]
    result["eval_ratio"] = s / t if s else None
    result["ratio_note"] = "spacy_rnn / torch: 1.0 means no overhead"
    _common.emit(result)
    return result


if __name__ == "__main__":
    main()
