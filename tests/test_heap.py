"""``spacy_rnn.keep_freed_memory.v1``: freed tensor memory is reused without
page faults. Each check runs in a fresh interpreter, since the setting is
process-wide."""
import json
import platform
import subprocess
import sys

import pytest
from spacy.util import registry

from spacy_rnn.optimization.heap import keep_freed_memory, make_keep_freed_memory_callback

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"

# Allocates and frees softmax-sized float32 tensors in the pattern of a
# training step (a few live at once, freed in a different order), touching
# every page, and prints the minor page faults per step after a warm-up.
SCRIPT = r"""
import json, resource, sys
import torch
from spacy_rnn.optimization.heap import keep_freed_memory

applied = keep_freed_memory() if sys.argv[1] == "keep" else None
n = 700 * 10000

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20

# The first large block: does freeing it hand its pages back to the kernel?
x = torch.empty(n).fill_(1.0)
held = rss_mb()
del x
released_mb = held - rss_mb()
def step():
    a = torch.empty(n).fill_(1.0)
    b = torch.empty(n).fill_(2.0)
    del a
    c = torch.empty(n // 2).fill_(3.0)
    d = torch.empty(n).fill_(4.0)
    del b, d, c
for _ in range(3):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    step()
after = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
print(json.dumps({"applied": applied, "released_mb": released_mb,
                  "faults_per_step": (after - before) / 20}))
"""


def _run(mode):
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
def test_freed_buffers_are_reused_without_page_faults():
    # With glibc's defaults a freed 28 MB block goes back to the kernel (and
    # the steps below then fault 0 or ~17,000 pages each, depending on the
    # state of the heap, which is what made timings bimodal).
    assert _run("default")["released_mb"] > 20
    kept = _run("keep")
    assert kept["applied"] is True
    assert kept["released_mb"] < 5
    # 28 MB buffers are 6,800 pages each: faulting them in again would show
    # thousands of faults per step.
    assert kept["faults_per_step"] < 50


def test_bad_thresholds_fail_clearly():
    with pytest.raises(ValueError, match="mmap_threshold_mb must be in"):
        keep_freed_memory(mmap_threshold_mb=64)
    with pytest.raises(ValueError, match="trim_threshold_mb must be in"):
        keep_freed_memory(trim_threshold_mb=4096)
    # From a config the error comes when the config is resolved.
    with pytest.raises(ValueError, match="mmap_threshold_mb"):
        registry.callbacks.get("spacy_rnn.keep_freed_memory.v1")(mmap_threshold_mb=0)


def test_callback_chains_and_returns_the_pipeline():
    import spacy

    nlp = spacy.blank("en")
    seen = []
    callback = make_keep_freed_memory_callback(then=lambda n: seen.append(n) or n)
    assert callback(nlp) is nlp
    assert seen == [nlp]


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
def test_environment_gives_a_child_the_same_heap():
    import os

    from spacy_rnn.optimization.heap import malloc_environment

    env = {**os.environ, **malloc_environment()}
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, "default"], capture_output=True, text=True, check=True, env=env
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["released_mb"] < 5 and result["faults_per_step"] < 50
