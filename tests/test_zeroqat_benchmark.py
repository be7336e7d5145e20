"""benchmarks.zeroqat's command line and its reading of the step-size sweeps (no model is built here)."""

import json

import pytest

from benchmarks import zeroqat


def test_unknown_model_or_scale_is_refused_with_exit_2(capsys):
    with pytest.raises(SystemExit) as exit:
        zeroqat.main(["--model", "no-such-model"])
    assert exit.value.code == 2 and "conf/model/no-such-model.yaml" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit:
        zeroqat.main(["--scale", "huge"])
    assert exit.value.code == 2


def _sweep(quant, rows):
    return {"model": "M", "quant": quant, "group_size": 64, "batch": "4x64", "eval_windows": 32,
            "ppl_start": {"lora": 100.0}, "trainable_params": {"lora": 10},
            "runs": [{"trainable": "lora", "lr": lr, "eps": 0.01, "q": 1, "curve": curve} for lr, curve in rows]}


def test_sweep_verdict_reads_each_quantization(tmp_path, monkeypatch):
    paths = (tmp_path / "a.json", tmp_path / "b.json")
    paths[0].write_text(json.dumps(_sweep("W4A8", [(1e-3, [[20, 99.0], [40, 97.0]]), (3e-3, [[20, 150.0], [40, None]])])))
    paths[1].write_text(json.dumps(_sweep("W4A4", [(1e-4, [[20, 104.0], [40, 110.0]])])))
    monkeypatch.setattr(zeroqat, "SWEEPS", paths)
    assert "100.0 -> 97.0 at lr 0.001" in zeroqat._sweep_verdict("W4A8")
    assert "found no stable row" in zeroqat._sweep_verdict("W4A4")
    assert zeroqat._sweep_verdict("W8A8").startswith("No lora step-size sweep")
    table = "\n".join(zeroqat.trainable_set_lines(paths))
    assert "| W4A8 | lora | 10 | 0.003 | 0.01 | 80 | 100.0 | nan | diverged | False |" in table
    assert "| W4A4 | lora | 10 | 0.0001 | 0.01 | 80 | 100.0 | 110.0 | +10.0% | False |" in table
