"""Loaded by `spacy train --code` in tests: from step 4 on, the textcat's
loss gradient turns NaN, as it would after a numerical blow-up. The weights
themselves are never touched, so the test can check that they survive."""
from spacy.util import registry


@registry.callbacks("spacy_rnn_test.poison_loss.v1")
def make_poison_loss():
    def before_update(nlp, args):
        if args["step"] < 4:
            return
        textcat = nlp.get_pipe("textcat")
        original = type(textcat).get_loss

        def get_loss(examples, scores):
            loss, d_scores = original(textcat, examples, scores)
            return float("nan"), d_scores * float("nan")

        textcat.get_loss = get_loss

    return before_update
