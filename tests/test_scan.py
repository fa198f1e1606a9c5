"""Parallel scans against the obvious loops (float64), at awkward lengths."""

import pytest
import torch

from helpers import rel_err
from pararnn_hf.ops.scan import (
    adjoint_scan,
    block_apply,
    block_compose,
    parallel_linear_scan,
    reverse_linear_scan,
    sequential_linear_scan,
    sequential_reverse_linear_scan,
)

# pure torch: CI's second pass (another transformers release) skips it
pytestmark = pytest.mark.torch_only

LENGTHS = [1, 2, 3, 7, 63, 64, 65, 1000]


@pytest.mark.parametrize("k", [1, 2])
def test_block_ops_match_einsum(k):
    J2, J1 = torch.randn(4, k, k, 5, dtype=torch.float64), torch.randn(4, k, k, 5, dtype=torch.float64)
    v = torch.randn(4, k, 5, dtype=torch.float64)
    assert rel_err(block_apply(J2, v), torch.einsum("bijn,bjn->bin", J2, v)) < 1e-15
    assert rel_err(block_compose(J2, J1), torch.einsum("bijn,bjkn->bikn", J2, J1)) < 1e-15


@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("T", LENGTHS)
def test_parallel_scan_matches_loop(k, T):
    J = torch.rand(3, T, k, k, 6, dtype=torch.float64) * 0.9 / k
    r = torch.randn(3, T, k, 6, dtype=torch.float64)
    assert rel_err(parallel_linear_scan(J, r), sequential_linear_scan(J, r)) < 1e-13


@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("T", LENGTHS)
def test_reverse_and_adjoint_scan_match_loop(k, T):
    J = torch.rand(2, T, k, k, 5, dtype=torch.float64) * 0.9 / k
    g = torch.randn(2, T, k, 5, dtype=torch.float64)
    M = J[:, 1:].transpose(-3, -2)
    expected = sequential_reverse_linear_scan(M, g)
    assert rel_err(reverse_linear_scan(M, g), expected) < 1e-13
    assert rel_err(adjoint_scan(J, g), expected) < 1e-13
    # the adjoint recursion written out: lam_t = g_t + J_{t+1}^T lam_{t+1}
    lam = [g[:, T - 1]]
    for t in range(T - 2, -1, -1):
        lam.append(g[:, t] + torch.einsum("bjin,bjn->bin", J[:, t + 1], lam[-1]))
    assert rel_err(expected, torch.stack(lam[::-1], dim=1)) < 1e-13
