"""A batch longer than the model's `max_len` is refused with both lengths named, on every model."""

from __future__ import annotations

import pytest

from causalgr.models import BACKBONES, FORMULATIONS
from model_helpers import make_model, random_batch


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("formulation", FORMULATIONS)
def test_a_batch_longer_than_max_len_names_both_lengths(formulation, backbone):
    model = make_model(formulation, backbone, num_tasks=2)  # max_len 32
    model(random_batch([32, 5], num_tasks=2, seed=0))  # exactly max_len is fine
    with pytest.raises(ValueError, match="batch has 33 events per row but the model's max_len is 32"):
        model(random_batch([33, 5], num_tasks=2, seed=0))
