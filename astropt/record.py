"""The readable record of one run, ``ckpt.json``: one typed :class:`RunRecord`, written by the
``train`` rule (:mod:`astropt.train`) and the ``released_model`` rule (:mod:`astropt.released`),
read by the scaling fit and the summary. Torch-free, so those stages can read it without torch.

Fields, in the order they are written (``None`` is written as ``null``, except for the fields
marked *omitted*, which are left out when ``None``):

- ``size``, ``params``, ``steps``, ``tokens_seen``, ``flops``: the size's name, its parameter
  count (without the position embedding), optimiser steps, training tokens and FLOPs;
- ``final_val_loss``, ``best_val_loss``: the last and the lowest validation loss (NaN or
  Infinity when there was none);
- ``val_loss_note`` (*omitted*): how the losses were obtained where that is not evident (the
  released weights store only ``best_val_loss``);
- ``elapsed_s``, ``gpu_hours``, ``peak_mem_gb``, ``tokens_per_s``, ``mfu``, ``device``,
  ``ranks``: the run's cost and machine (``null`` where not recorded: the released weights, or
  ``mfu`` on the CPU);
- ``seed`` (*omitted*): the training seed; ``provenance`` (*omitted*): seeds, threads,
  software and machine (:func:`astropt.train.provenance`);
- ``model_args``, ``lr``, ``train``: the model's shape, peak learning rate and training settings;
- ``source``, ``image_transpose``, ``released`` (*omitted*): set for the released weights only
  (``"released"``, ``true`` and where the checkpoint came from).

Files written before this module (older runs lack ``ranks``, ``provenance`` and so on) read
with ``None`` for what they do not hold.

Example::

    from astropt.record import RunRecord

    run = RunRecord.read("results/models/416K/seed0/ckpt.json")
    run.params, run.final_val_loss, (run.provenance or {}).get("threads")
"""

from __future__ import annotations

import json
import os
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from astropt.io import atomic_write

__all__ = ["RunRecord"]

_OMIT = {"omit_if_none": True}


@dataclass(frozen=True, kw_only=True)
class RunRecord:
    """One run's ``ckpt.json`` (see the module docstring for the fields)."""

    size: str
    params: int
    steps: int
    tokens_seen: int
    flops: float
    final_val_loss: float
    best_val_loss: float
    val_loss_note: str | None = field(default=None, metadata=_OMIT)
    elapsed_s: float | None = None
    gpu_hours: float | None = None
    peak_mem_gb: float | None = None
    tokens_per_s: float | None = None
    mfu: float | None = None
    device: str | None = None
    ranks: int | None = None
    seed: int | None = field(default=None, metadata=_OMIT)
    provenance: dict[str, Any] | None = field(default=None, metadata=_OMIT)
    model_args: dict[str, Any]
    lr: float
    train: dict[str, Any]
    source: str | None = field(default=None, metadata=_OMIT)
    image_transpose: bool | None = field(default=None, metadata=_OMIT)
    released: dict[str, Any] | None = field(default=None, metadata=_OMIT)

    def to_dict(self) -> dict[str, Any]:
        """The record as ``ckpt.json`` holds it: fields in order, *omitted* ones left out when None."""
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if not (f.metadata.get("omit_if_none") and getattr(self, f.name) is None)
        }

    def to_json(self) -> str:
        """The text of ``ckpt.json``: :meth:`to_dict` indented by two, with a final newline."""
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def write(self, path: str | os.PathLike) -> None:
        """Write :meth:`to_json` to ``path`` atomically (:func:`astropt.io.atomic_write`)."""
        atomic_write(path, lambda tmp: tmp.write_text(self.to_json()))

    @classmethod
    def read(cls, path: str | os.PathLike) -> "RunRecord":
        """Read a ``ckpt.json`` written by ``train`` or ``released_model``, this version or an older one:
        fields it lacks are None, keys it has beyond them are ignored.

        Raises:
            FileNotFoundError: If ``path`` does not exist.
            ValueError: If it is not JSON, or not a run record: not an object, or lacking a field every
                version of the file holds (``size``, ``params``, ``steps``, ``tokens_seen``, ``flops``,
                the losses, ``model_args``, ``lr``, ``train``).
        """
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not JSON: {err}") from err
        if not isinstance(data, dict):
            raise ValueError(f"{path} is not a run record (ckpt.json): expected an object, got {type(data).__name__}")
        missing = [f.name for f in fields(cls) if f.default is MISSING and f.name not in data]
        if missing:
            raise ValueError(f"{path} is not a run record (ckpt.json): no {', '.join(missing)}")
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})
