"""Where the memory of one very long doc goes: peak RSS per stage.

Builds the width-32 test textcat (tests/util.py), then for one doc of N
tokens measures the peak resident set size of each stage on its own: the
tokenizer, the embedding (MultiHashEmbed), the RNN encoder, and pooling plus
output. Peaks come from the kernel's high-water mark (VmHWM), reset before
each stage by writing 5 to /proc/self/clear_refs (Linux only).

    OMP_NUM_THREADS=1 python benchmarks/long_doc_memory.py --tokens 1000000
"""
import argparse
import gc
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _status(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


class Stage:
    """Context manager: peak RSS above the RSS at entry, in bytes."""

    def __init__(self, results, name):
        self.results, self.name = results, name

    def __enter__(self):
        gc.collect()
        Path("/proc/self/clear_refs").write_text("5")
        self.start = _status("VmRSS")
        return self

    def __exit__(self, *exc):
        peak = _status("VmHWM")
        self.results[self.name] = {
            "peak_above_start_MB": round((peak - self.start) / 1e6, 1),
            "kept_MB": round((_status("VmRSS") - self.start) / 1e6, 1),
        }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=1_000_000)
    parser.add_argument("--chunk", type=int, default=None, help="encoder chunk length (default: module default)")
    parser.add_argument("--width", type=int, default=32)
    args = parser.parse_args()

    import numpy
    from thinc.api import fix_random_seed

    from tests.util import blank_with_textcat, fixture_examples

    fix_random_seed(0)
    nlp = blank_with_textcat()
    textcat = nlp.get_pipe(nlp.pipe_names[0])
    nlp.initialize(lambda: fixture_examples(nlp))
    nlp.max_length = 10 * args.tokens + 10
    model = textcat.model
    tok2vec = model.get_ref("tok2vec")
    embed, encode = tok2vec.layers[0], tok2vec.layers[-1]
    rnn = [n for n in encode.walk() if n.name == "rnn_encoder"][0]
    module = rnn.shims[0]._model
    if args.chunk is not None:
        module.inference_chunk = args.chunk
    results = {"tokens": args.tokens, "width": args.width,
               "inference_chunk": getattr(module, "inference_chunk", None),
               "baseline_RSS_MB": round(_status("VmRSS") / 1e6, 1)}
    text = "word " * args.tokens
    with Stage(results, "tokenizer"):
        doc = nlp.make_doc(text)
    assert len(doc) == args.tokens
    with Stage(results, "embed"):
        X = embed.predict([doc])
    with Stage(results, "encoder"):
        Y = encode.predict(X)
    with Stage(results, "pool+output"):
        rest = model.layers[1:]
        H = Y
        for layer in rest:
            H = layer.predict(H)
    del X, Y, H
    with Stage(results, "whole textcat (nlp(doc) minus tokenizer)"):
        textcat(doc)
    assert all(numpy.isfinite(v) for v in doc.cats.values())
    results["peak_RSS_process_MB"] = round(_status("VmHWM") / 1e6, 1)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
