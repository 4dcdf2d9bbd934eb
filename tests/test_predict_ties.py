"""Exact ties among the top probabilities (bf16 rounds some classes to the same value): topk breaks them
differently from argmax, and differently for each k. `predict --verify` counted a printed label that agreed
with fp32 as a disagreement (98.5% shown, 99.0% true); the labels printed, the agreement and eval's scores
must rank one way."""
import pytest
import torch

from resnetlab.engine.evaluate import count_correct
from resnetlab.inference.predictor import iter_predictions, top1_agreement

# airplane and automobile tie exactly; argmax says airplane, topk automobile
TIED = [[0.3317769, 0.3317769, 0.1364462, 0.2], [0.1, 0.2, 0.6, 0.1]]
FP32 = [[0.3317, 0.3318, 0.1365, 0.2], [0.1, 0.2, 0.6, 0.1]]
# three classes tie: topk(10) ranks class 1 first, topk(1), topk(2) and topk(5) class 2
TEN = [[0.05, 0.25, 0.25, 0.05, 0.05, 0.05, 0.05, 0.05, 0.25, 0.05]]


class Fixed:
    """A predictor whose probabilities are given: one batch holding every image."""

    def __init__(self, probs, reference=None):
        self._probs, self._reference = torch.tensor(probs), reference
        self.classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
        self.classes = self.classes[:self._probs.shape[1]]
        self.failed, self.failed_at, self.model, self.precision = [], set(), None, "bf16"
        self.rt = type("Rt", (), {"channels_last": True})

    def batches(self, paths, protocol="center", batch_size=64):
        yield None, torch.arange(len(paths))

    def probs(self, views):
        return self._probs

    def reference(self):
        return self._reference


def printed_top1(predictor, topk=5):
    paths = [f"{i}.jpg" for i in range(len(predictor._probs))]
    return [top[0]["class"] for _, top in iter_predictions(predictor, paths, topk)]


def test_agreement_counts_the_labels_printed_when_probabilities_tie():
    fast, ref = Fixed(TIED, Fixed(FP32)), Fixed(FP32)
    assert printed_top1(fast) == printed_top1(ref) == ["automobile", "bird"]
    check = top1_agreement(fast, ["a.jpg", "b.jpg"])
    assert check["n"] == 2 and check["top1_agreement"] == 100.0


def test_a_disagreement_is_still_counted():
    fast = Fixed([[0.4, 0.3, 0.2, 0.1], [0.1, 0.2, 0.6, 0.1]], Fixed(FP32))
    assert top1_agreement(fast, ["a.jpg", "b.jpg"])["top1_agreement"] == 50.0


@pytest.mark.parametrize("topk", [1, 2, 5, 10])
def test_the_printed_top1_is_evals_whatever_topk_is(topk):
    probs = torch.tensor(TEN)
    scored = [c for c in range(10) if count_correct(probs, torch.tensor([c]))[0] == 1]  # eval's top-1
    assert printed_top1(Fixed(TEN), topk) == [Fixed(TEN).classes[c] for c in scored] == ["bird"]


def test_topk_past_five_lists_the_others_after_evals_five():
    top = next(iter_predictions(Fixed(TEN), ["a.jpg"], 10))[1]
    assert top[0]["class"] == "bird" and {t["class"] for t in top[:3]} == {"automobile", "bird", "ship"}
    assert sorted(t["index"] for t in top) == list(range(10))
    assert [t["prob"] for t in top] == sorted((t["prob"] for t in top), reverse=True)
