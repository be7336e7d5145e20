import pytest
import torch

from client.trainers.base import batch_indices
from textdata.corpus import assign_clients, windows


def test_windows_pad_the_last_partial_window():
    ids = torch.arange(10, dtype=torch.int32)
    x, y = windows(ids, 4, pad_id=99)
    assert x.shape == (3, 4)
    assert x[2].tolist() == [8, 9, 99, 99]
    assert y[2].tolist() == [8, 9, -100, -100]
    assert x[:2].flatten().tolist() == list(range(8))


def test_windows_of_empty_stream_is_one_padded_window():
    x, y = windows(torch.tensor([], dtype=torch.int32), 4, pad_id=0)
    assert x.shape == (1, 4) and (y == -100).all()


def test_assign_clients_deals_every_role_out_once():
    a = assign_clients(80, 700, seed=3)
    flat = [c for dev in a for c in dev]
    assert sorted(flat) == list(range(700))  # every role on exactly one device
    assert {len(dev) for dev in a} == {8, 9}
    assert a == assign_clients(80, 700, seed=3)
    assert a != assign_clients(80, 700, seed=4)


def test_assign_clients_fixed_number_per_device():
    a = assign_clients(100, 700, seed=0, per_device=1)
    assert all(len(dev) == 1 for dev in a) and len({dev[0] for dev in a}) == 100


def test_assign_clients_needs_enough_clients():
    with pytest.raises(ValueError, match="lower data.min_lines"):
        assign_clients(81, 80, seed=0)
    with pytest.raises(ValueError, match="roles_per_device"):
        assign_clients(40, 80, seed=0, per_device=3)


def test_batches_sweep_every_window_before_repeating():
    batches = batch_indices(10, 4, 5, seed=0)
    flat = [int(i) for b in batches for i in b]
    assert sorted(flat[:10]) == list(range(10))
    assert len(flat) == 20
