import numpy as np
import pytest

from strategies.aggregation import apply_delta, weighted_mean


def test_weighted_mean_matches_hand_computation():
    d1 = {"a": np.array([1.0, 2.0], dtype=np.float32), "b": np.array([[0.0]], dtype=np.float32)}
    d2 = {"a": np.array([3.0, 6.0], dtype=np.float32), "b": np.array([[4.0]], dtype=np.float32)}
    out = weighted_mean([d1, d2], [1, 3])
    # (1*[1,2] + 3*[3,6]) / 4 = [2.5, 5.0]; (1*0 + 3*4) / 4 = 3
    np.testing.assert_allclose(out["a"], [2.5, 5.0])
    np.testing.assert_allclose(out["b"], [[3.0]])
    assert out["a"].dtype == np.float32


def test_equal_weights_is_plain_mean_and_apply_delta_adds():
    d = [{"w": np.full(3, float(i), dtype=np.float32)} for i in range(4)]
    mean = weighted_mean(d, [7, 7, 7, 7])
    np.testing.assert_allclose(mean["w"], 1.5)
    new = apply_delta({"w": np.ones(3, dtype=np.float32)}, mean)
    np.testing.assert_allclose(new["w"], 2.5)


@pytest.mark.parametrize(
    "deltas, weights, message",
    [
        ([], [], "nothing"),
        ([{"a": np.zeros(1)}], [0], "positive"),
        ([{"a": np.zeros(1)}, {"b": np.zeros(1)}], [1, 1], "keys"),
        ([{"a": np.zeros(1)}], [1, 2], "one weight"),
    ],
)
def test_bad_input(deltas, weights, message):
    with pytest.raises(ValueError, match=message):
        weighted_mean(deltas, weights)
