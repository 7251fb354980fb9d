"""trainer_tune/workloads/batch.py: every batch structure reaches the device whole, and is counted in samples and,
where it carries them, tokens (docs/your-model.md, "Units")."""

from __future__ import annotations

from collections import OrderedDict, namedtuple
from collections.abc import Iterator, Mapping

import pytest
import torch

from trainer_tune.platform.syncs import host_int
from trainer_tune.workloads.batch import count_samples, count_tokens, describe, move_to_device

META = torch.device("meta")
"""A second device every machine has: a tensor moved there says so in its .device."""

Pair = namedtuple("Pair", ["inputs", "targets"])


class Encoding(Mapping):
    """Like a Hugging Face BatchEncoding: a read-only mapping type that can be rebuilt from a dict."""

    def __init__(self, data: dict) -> None:
        self._data = dict(data)

    def __getitem__(self, key: str) -> object:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


class FixedKeys(Encoding):
    """A mapping type that cannot be built from a dict (its constructor takes no arguments)."""

    def __init__(self) -> None:
        super().__init__({"x": torch.zeros(2)})


def _devices(batch: object) -> list[str]:
    if isinstance(batch, torch.Tensor):
        return [batch.device.type]
    values = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, (tuple, list)) else []
    return [device for value in values for device in _devices(value)]


def test_every_tensor_of_a_nested_batch_moves_and_the_structure_stays() -> None:
    batch = {"images": torch.zeros(2, 3), "meta": [torch.ones(2), ("name", 7, None)],
             "pair": Pair(torch.zeros(2, 1), torch.tensor([0, 1])), "enc": Encoding({"input_ids": torch.ones(2, 4)})}
    moved = move_to_device(batch, META, non_blocking=False)
    assert type(moved) is dict and list(moved) == ["images", "meta", "pair", "enc"]
    assert isinstance(moved["pair"], Pair) and moved["pair"].targets.device == META  # a namedtuple stays one
    assert isinstance(moved["enc"], Encoding) and moved["enc"]["input_ids"].device == META
    assert type(moved["meta"]) is list and moved["meta"][1] == ("name", 7, None)  # non-tensors ride along
    assert _devices(moved) == ["meta"] * 5
    assert _devices(batch) == ["cpu"] * 5  # the source's batch is not changed in place


def test_a_mapping_type_that_cannot_be_rebuilt_becomes_a_dict() -> None:
    moved = move_to_device(FixedKeys(), META, non_blocking=False)
    assert type(moved) is dict and moved["x"].device == META
    ordered = move_to_device(OrderedDict(b=torch.zeros(1), a=torch.zeros(1)), META, non_blocking=False)
    assert type(ordered) is OrderedDict and list(ordered) == ["b", "a"]


def test_a_hugging_face_batch_encoding_stays_one() -> None:
    transformers = pytest.importorskip("transformers")
    encoding = transformers.BatchEncoding({"input_ids": torch.ones(2, 4, dtype=torch.long),
                                           "attention_mask": torch.ones(2, 4, dtype=torch.long)})
    moved = move_to_device(encoding, META, non_blocking=False)
    assert isinstance(moved, transformers.BatchEncoding) and moved["input_ids"].device == META
    assert moved.input_ids.device == META  # attribute access, as models' callers use it


@pytest.mark.parametrize("batch,samples", [
    (torch.zeros(5, 3), 5),
    ((torch.zeros(4, 3, 8, 8), torch.zeros(4, dtype=torch.long)), 4),
    ({"meta": "no tensor here", "input_ids": torch.zeros(3, 7, dtype=torch.long)}, 3),
    ([[torch.zeros(6)], torch.zeros(2)], 6),  # the first tensor, depth first
    (torch.tensor(1.0), None),  # a 0-d tensor has no batch dimension
    ({"names": ["a", "b"]}, None),
])
def test_samples_are_the_first_dimension_of_the_first_tensor(batch: object, samples: int | None) -> None:
    assert count_samples(batch) == samples


def _ids(*shape: int) -> torch.Tensor:
    return torch.randint(1, 100, shape)


PADDED_MASK = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])


@pytest.mark.parametrize("batch,tokens", [
    # The attention mask's sum: padding is not counted.
    ({"input_ids": _ids(2, 4), "attention_mask": PADDED_MASK, "labels": torch.tensor([0, 1])}, 5),
    ({"input_ids": _ids(2, 4), "attention_mask": PADDED_MASK.bool()}, 5),
    # No mask: every id.
    ({"input_ids": _ids(2, 4), "labels": torch.tensor([0, 1])}, 8),
    # The language-model path: [batch, seq_len + 1], of which the model reads seq_len per sample.
    (_ids(2, 129), 2 * 128),
    # A pair whose inputs are token ids, or a mapping of them.
    ((_ids(3, 10), torch.tensor([0, 1, 0])), 30),
    (({"input_ids": _ids(2, 4), "attention_mask": PADDED_MASK}, torch.tensor([0, 1])), 5),
    # No tokens: images, float features, class ids alone, a mapping without ids.
    ((torch.zeros(4, 3, 8, 8), torch.zeros(4, dtype=torch.long)), None),
    (torch.zeros(4, 16), None),
    (torch.zeros(4, dtype=torch.long), None),
    (torch.zeros(4, 8, dtype=torch.bool), None),
    ({"anchor": torch.zeros(4, 8), "positive": torch.zeros(4, 8)}, None),
    ((), None),
])
def test_tokens_follow_the_rule(batch: object, tokens: int | None) -> None:
    assert count_tokens(batch) == tokens


def test_a_mask_on_the_device_is_counted_there_and_read_once() -> None:
    counted = count_tokens({"input_ids": _ids(2, 4).to(META), "attention_mask": PADDED_MASK.to(META)})
    assert isinstance(counted, torch.Tensor) and counted.device == META  # no read inside the timed step
    assert host_int(torch.tensor(5)) == 5 and host_int(7) == 7


def test_a_batch_is_described_in_one_line() -> None:
    text = describe({"input_ids": torch.zeros(8, 64, dtype=torch.long), "pair": (torch.zeros(8, 3), "x")})
    assert text == "dict(input_ids: int64[8, 64], pair: tuple(float32[8, 3], str))"
    many = describe([torch.zeros(1)] * 8)
    assert many.endswith(", ...)") and "\n" not in many
