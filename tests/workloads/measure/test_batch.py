"""Every batch a training loop accepts, moved, cast and passed to the model the way a
hand-written loop does, by the one mover the timed loop and the FLOP count share."""

from __future__ import annotations

import dataclasses
import sys
import types
from collections import OrderedDict
from collections.abc import MutableMapping
from pathlib import Path
from typing import NamedTuple

import pytest
import torch
import transformers
from torch.nn.utils.rnn import pack_padded_sequence
from torch.utils.flop_counter import FlopCounterMode

from stepscope.workloads.measure.batch import call_model, to_device
from stepscope.workloads.measure.runner import run_trial
from stepscope.workloads.registry import resolve_params
from stepscope.workloads.trial import Trial

FIXTURES = Path(__file__).parents[2] / "fixtures"
sys.path.insert(0, str(FIXTURES))
import hf_batches  # noqa: E402

META = torch.device("meta")  # a device other than the CPU, on every machine


class Pair(NamedTuple):
    x: torch.Tensor
    ids: torch.Tensor


@dataclasses.dataclass
class Sample:
    x: torch.Tensor
    ids: torch.Tensor
    name: str = "n"


def test_a_batch_encoding_keeps_its_type_and_is_cast_per_value():
    enc = transformers.BatchEncoding({"input_ids": torch.ones(2, 3, dtype=torch.long),
                                      "pixel_values": torch.ones(2, 3)})
    moved = to_device(enc, META, torch.bfloat16)
    assert type(moved) is transformers.BatchEncoding and moved is not enc
    assert moved["input_ids"].device == META and moved["input_ids"].dtype == torch.long
    assert moved["pixel_values"].device == META and moved["pixel_values"].dtype == torch.bfloat16
    assert enc["pixel_values"].device.type == "cpu"  # the original is left as it was


def test_containers_are_rebuilt_as_what_they_were():
    x, ids = torch.ones(2, 2), torch.arange(2)
    nested = {"pair": Pair(x, ids), "list": [x, (ids, 3)], "sample": Sample(x, ids), "od": OrderedDict(a=x)}
    moved = to_device(nested, META, torch.float16)
    assert type(moved["pair"]) is Pair and moved["pair"].x.dtype == torch.float16
    assert moved["pair"].ids.dtype == torch.long and moved["pair"].ids.device == META
    assert type(moved["list"]) is list and type(moved["list"][1]) is tuple and moved["list"][1][1] == 3
    assert type(moved["sample"]) is Sample and moved["sample"].name == "n"
    assert moved["sample"].x.device == META and moved["sample"].x.dtype == torch.float16
    assert type(moved["od"]) is OrderedDict
    frozen = to_device(types.MappingProxyType({"a": x}), META)
    assert frozen["a"].device == META


def test_an_object_with_its_own_to_uses_it():
    """A PackedSequence is a named tuple with its own `.to()`, which keeps `batch_sizes` on
    the CPU (pack/unpack need it there): rebuilding it field by field would move it."""
    packed = pack_padded_sequence(torch.ones(2, 3, 4), torch.tensor([3, 2]), batch_first=True)
    moved = to_device(packed, META, torch.bfloat16)
    assert moved.data.device == META and moved.data.dtype == torch.bfloat16
    assert moved.batch_sizes.device.type == "cpu"


def test_call_model_calls_as_a_hand_written_loop_does():
    seen = []

    def model(*args, **kwargs):
        seen.append((args, kwargs))

    enc = transformers.BatchEncoding({"input_ids": 1, "attention_mask": 2})
    call_model(model, enc)
    call_model(model, Pair(1, 2))
    call_model(model, Sample(1, 2))
    call_model(model, 5)
    assert seen[0] == ((), {"input_ids": 1, "attention_mask": 2})
    assert seen[1] == ((1, 2), {})
    assert seen[2][0][0] == Sample(1, 2) and seen[3] == ((5,), {})


def trial(kind: str, precision: str = "fp32", **params) -> dict:
    p = resolve_params({"workload": "hf_batches:build", "batch_kind": kind, "batch_size": 4,
                        "iterations": 2, "warmup": 1, "precision": precision, **params})
    row = run_trial(Trial(0, "t0", 0, None, p), "s", None, search_paths=[str(FIXTURES)])
    assert row["status"] == "ok", row["error"]
    return row


def bert_forward_flops(batch: int) -> int:
    """torch's own counter on a plain `model(**batch)` of the same BERT."""
    model = transformers.BertForSequenceClassification(hf_batches.config())
    ids = torch.randint(0, hf_batches.VOCAB, (batch, hf_batches.SEQ))
    with FlopCounterMode(display=False) as counter:
        model(input_ids=ids, attention_mask=torch.ones_like(ids))
    return counter.get_total_flops()


@pytest.mark.parametrize("kind", ["batch_encoding", "namedtuple", "dataclass", "nested"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_transformers_model_trains_on_every_kind_of_batch(kind, precision):
    row = trial(kind, precision)
    assert row["final_loss"] > 0 and row["flops_error"] is None
    # The FLOP count fed the model the same batch the same way (one mover, one caller).
    assert row["flops_forward"] == bert_forward_flops(4)


@dataclasses.dataclass
class Derived:
    """A dataclass whose __init__ is not a plain store: __post_init__ derives a field, an
    init=False field is set afterwards, an InitVar is consumed."""

    x: torch.Tensor
    scale: dataclasses.InitVar[float]
    lengths: torch.Tensor = dataclasses.field(init=False)

    def __post_init__(self, scale):
        self.x = self.x * scale


@dataclasses.dataclass(frozen=True)
class Frozen:
    x: torch.Tensor


def test_a_dataclass_is_moved_as_made_never_built_again():
    d = Derived(torch.ones(3), scale=2.0)
    d.lengths = torch.tensor([3])
    moved = to_device(d, META, torch.float16)
    assert type(moved) is Derived and moved is not d
    assert moved.x.device == META and moved.x.dtype == torch.float16
    assert moved.lengths.device == META and moved.lengths.dtype == torch.long
    # __post_init__ did not run again: on the CPU the moved value is the one made (2, not 4).
    assert torch.equal(to_device(d, torch.device("cpu")).x, torch.full((3,), 2.0))
    frozen = to_device(Frozen(torch.ones(2)), META)
    assert type(frozen) is Frozen and frozen.x.device == META


class SharedStore(MutableMapping):
    """A mapping whose copies share one store, as some caching batch classes do."""

    def __init__(self, data):
        self.data = data

    def __copy__(self):
        return SharedStore(self.data)

    def __getitem__(self, k):
        return self.data[k]

    def __setitem__(self, k, v):
        self.data[k] = v

    def __delitem__(self, k):
        del self.data[k]

    def __iter__(self):
        return iter(self.data)

    def __len__(self):
        return len(self.data)


def test_the_user_s_own_batch_is_never_moved_in_place():
    """A workload that hands out the same batch every step must see it unmoved every
    step, or `to_device` would measure nothing from the second step on."""
    original = torch.ones(2, 2)
    batch = SharedStore({"x": original})
    moved = to_device(batch, META, torch.bfloat16)
    assert batch["x"] is original and moved["x"].device == META and moved["x"].dtype == torch.bfloat16
    assert type(moved) is SharedStore
