import pytest

from fleet.clock import DeviceTime, round_time
from fleet.devices import build_fleet, class_counts
from runconfig.load import compose


def test_round_lasts_as_long_as_its_slowest_reply():
    assert round_time([DeviceTime(1, 0, 0), DeviceTime(0.5, 2, 1)]) == 3.5
    assert round_time([]) == 0.0


@pytest.mark.parametrize("size", [1, 7, 80, 161, 1000])
def test_fleet_size_override_keeps_every_device(size):
    s = compose(["+fleet=80dev", f"fleet.size={size}", "federation.cohort_size=1", "federation.eval_cohort_size=1"])
    counts = class_counts(s.fleet)
    assert sum(counts.values()) == size
    devices = build_fleet(s.fleet, seed=0)
    assert [d.index for d in devices] == list(range(size))


def test_80dev_mix_and_fedspine_testbed():
    assert class_counts(compose(["+fleet=80dev"]).fleet) == {
        "jetson_tx2": 20, "jetson_xavier_nx": 25, "jetson_agx_xavier": 10, "pixel_8": 15, "oneplus_12": 10}
    assert class_counts(compose(["+fleet=80dev_jetson"]).fleet) == {
        "jetson_tx2": 30, "jetson_xavier_nx": 40, "jetson_agx_xavier": 10}


def test_spreads_make_devices_of_a_class_differ_reproducibly():
    plain = build_fleet(compose(["+fleet=80dev"]).fleet, seed=3)
    spread_cfg = compose(["+fleet=80dev", "fleet.link_spread=0.5", "fleet.compute_spread=0.3"]).fleet
    spread = build_fleet(spread_cfg, seed=3)
    assert [d.class_name for d in spread] == [d.class_name for d in plain]  # same devices, same data
    assert spread == build_fleet(spread_cfg, seed=3)  # drawn from the seed
    for name in spread_cfg.classes:
        nominal = spread_cfg.classes[name]
        members = [d.profile for d in spread if d.class_name == name]
        assert len({round(p.uplink_mbps, 6) for p in members}) == len(members) > 1
        for p in members:  # one factor per device for both links; memory and trainer are the class's
            assert p.downlink_mbps / p.uplink_mbps == pytest.approx(nominal.downlink_mbps / nominal.uplink_mbps)
            assert (p.memory_gb, p.trainer) == (nominal.memory_gb, nominal.trainer)
    assert all(d.profile == compose(["+fleet=80dev"]).fleet.classes[d.class_name] for d in plain)
