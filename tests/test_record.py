"""The typed ckpt.json (astropt/record.py): the same bytes as the hand-built sidecars of
``train`` and ``released_model``, older files read back, no torch.

Run: python -m pytest tests/test_record.py -q
"""

import json
import math
import subprocess
import sys

import pytest

from astropt.record import RunRecord

from conftest import ROOT

TRAIN_KEYS = ["size", "params", "steps", "tokens_seen", "flops", "final_val_loss", "best_val_loss", "elapsed_s",
              "gpu_hours", "peak_mem_gb", "tokens_per_s", "mfu", "device", "ranks", "seed", "provenance",
              "model_args", "lr", "train"]
RELEASED_KEYS = ["size", "params", "steps", "tokens_seen", "flops", "final_val_loss", "best_val_loss", "val_loss_note",
                 "elapsed_s", "gpu_hours", "peak_mem_gb", "tokens_per_s", "mfu", "device", "ranks", "model_args", "lr",
                 "train", "source", "image_transpose", "released"]
MODEL_ARGS = {"n_layer": 2, "n_head": 2, "n_embd": 32, "n_chan": 3, "block_size": 16, "dropout": 0.0, "patch_size": 8}


def _trained() -> dict:
    """A sidecar as train.py wrote it by hand (same keys, order and value types), a CPU run."""
    return {
        "size": "20K", "params": 25_792, "steps": 40, "tokens_seen": 9600, "flops": 1.234e9,
        "final_val_loss": 0.123456789, "best_val_loss": 0.12, "elapsed_s": 3.25, "gpu_hours": 0.0,
        "peak_mem_gb": 0.5, "tokens_per_s": 12345.6, "mfu": None, "device": "cpu", "ranks": 1, "seed": 0,
        "provenance": {"seed": 0, "data_seed": 7, "threads": 1, "torch": "2.5.1", "numpy": "2.1.0", "python": "3.11.7",
                       "cpu_capability": "AVX2", "cpu": "x", "gpu": None, "host": "h", "dtype": "float32"},
        "model_args": MODEL_ARGS, "lr": 0.003,
        "train": {"steps": 40, "micro_batch": 16, "betas": [0.9, 0.95], "eval_galaxies": None, "threads": 1},
    }


def _released() -> dict:
    """A sidecar as released.convert_checkpoint built it by hand (before RunRecord)."""
    return {
        "size": "1M", "params": 1_067_520, "steps": 30000, "tokens_seen": 9_820_800_000, "flops": 6.5e16,
        "final_val_loss": 0.3125, "best_val_loss": 0.3125, "val_loss_note": "best_val_loss, used as the final one",
        "elapsed_s": None, "gpu_hours": None, "peak_mem_gb": None, "tokens_per_s": None, "mfu": None,
        "device": None, "ranks": None, "model_args": MODEL_ARGS, "lr": 0.001,
        "train": {"steps": 30000, "micro_batch": 32, "grad_accum": 10},
        "source": "released", "image_transpose": True,
        "released": {"repo": "Smith42/astroPT", "revision": "main", "commit": "abc", "file": "f.pt", "size": 1,
                     "sha256": "00"},
    }


@pytest.mark.parametrize("make, keys", [(_trained, TRAIN_KEYS), (_released, RELEASED_KEYS)])
def test_same_bytes_as_the_hand_built_sidecars(make, keys):
    d = make()
    assert list(d) == keys
    record = RunRecord(**d)
    assert record.to_json() == json.dumps(d, indent=2) + "\n"  # key order, nulls, omissions
    assert list(record.to_dict()) == keys


def test_write_then_read_round_trip(tmp_path):
    for make in (_trained, _released):
        record = RunRecord(**make())
        path = tmp_path / make.__name__ / "ckpt.json"
        record.write(path)
        assert path.read_text() == record.to_json()
        assert RunRecord.read(path) == record
        assert [p.name for p in path.parent.iterdir()] == ["ckpt.json"]  # no temporary left


def test_non_finite_losses_survive(tmp_path):
    d = {**_trained(), "final_val_loss": float("nan"), "best_val_loss": float("inf")}
    RunRecord(**d).write(tmp_path / "ckpt.json")
    assert '"final_val_loss": NaN' in (tmp_path / "ckpt.json").read_text()
    back = RunRecord.read(tmp_path / "ckpt.json")
    assert math.isnan(back.final_val_loss) and back.best_val_loss == math.inf


def test_older_files_read_with_none_for_what_they_lack(tmp_path):
    # the first version's sidecar: no cost, machine, seed or provenance
    old = {k: v for k, v in _trained().items() if k in
           ("size", "params", "steps", "tokens_seen", "flops", "final_val_loss", "best_val_loss", "elapsed_s",
            "model_args", "lr", "train")}
    (tmp_path / "ckpt.json").write_text(json.dumps({**old, "future_key": 1}, indent=2))
    record = RunRecord.read(tmp_path / "ckpt.json")
    assert record.params == 25_792 and record.elapsed_s == 3.25
    assert record.gpu_hours is None and record.ranks is None and record.provenance is None and record.seed is None
    assert record.source is None and record.released is None


def test_not_a_record_is_explained(tmp_path):
    path = tmp_path / "ckpt.json"
    path.write_text(json.dumps({"size": "1M"}))
    with pytest.raises(ValueError, match="not a run record.*params"):
        RunRecord.read(path)
    path.write_text("{")
    with pytest.raises(ValueError, match="not JSON"):
        RunRecord.read(path)
    with pytest.raises(FileNotFoundError):
        RunRecord.read(tmp_path / "absent.json")


def test_record_is_torch_free():
    code = "import sys, astropt.record; assert 'torch' not in sys.modules, 'torch imported'"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
