"""The one way rows are grouped by prompt: group_ids_for and groups."""

import pytest
import torch

from rlpost.groups import GROUP_STRIDE, group_ids_for, groups


def test_group_ids_for_repeat_each_prompt_and_never_collide_across_steps():
    assert group_ids_for(3, 2, 2) == [300_000, 300_000, 300_001, 300_001]
    assert group_ids_for(0, 3) == [0, 1, 2]
    assert not set(group_ids_for(1, 5, 2)) & set(group_ids_for(2, 5, 2))
    with pytest.raises(ValueError, match="group ids allow"):
        group_ids_for(0, GROUP_STRIDE + 1)


def test_groups_first_seen_order_and_tensor_values():
    assert groups([5, 2, 5, "a", 2]) == {5: [0, 2], 2: [1, 4], "a": [3]}
    assert list(groups([9, 1, 9])) == [9, 1]
    assert groups(torch.tensor([4, 4, 1])) == {4: [0, 1], 1: [2]}  # values, not tensor objects
    assert groups([]) == {}
