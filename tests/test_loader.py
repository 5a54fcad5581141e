"""The host side of the training data path (astropt.loader).

Run: python -m pytest tests/test_loader.py -q
"""

import numpy as np
import pytest

from astropt.loader import BatchGatherer
from tokens_helper import token_split


def test_gathers_sorted_rows_into_its_buffer(tmp_path):
    tokens = np.random.default_rng(0).integers(0, 256, (10, 4, 6), dtype=np.uint8)
    split = token_split(tmp_path, [tokens[:4], tokens[4:]])  # rows across two shards
    gather = BatchGatherer(split.tokens, 4)
    out = gather(np.array([7, 2, 5]))
    np.testing.assert_array_equal(out.numpy(), tokens[[2, 5, 7]])
    assert out.data_ptr() == gather.buffers[0].data_ptr()
    np.testing.assert_array_equal(gather(np.array([0, 9, 1, 3])).numpy(), tokens[[0, 1, 3, 9]])


def test_float_tokens_and_bad_requests(tmp_path):
    tokens = np.random.default_rng(1).normal(size=(5, 3, 2)).astype(np.float32)
    gather = BatchGatherer(token_split(tmp_path, [tokens]).tokens, 2)
    np.testing.assert_array_equal(gather(np.array([4, 0])).numpy(), tokens[[0, 4]])
    with pytest.raises(IndexError, match="outside 0..4"):
        gather(np.array([-1, 2]))  # not row 4: a batch's indices never count from the end
    with pytest.raises(IndexError):
        gather(np.array([5]))
    with pytest.raises(ValueError, match="exceeds"):
        gather(np.arange(3))
