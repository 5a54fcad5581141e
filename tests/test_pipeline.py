"""Stage functions of astropt.pipeline that the workflow tests do not pin down.

Run: python -m pytest tests/test_pipeline.py -q
"""

import pandas as pd

from astropt import pipeline


def test_colours_are_derived_only_when_missing(tmp_path):
    meta = pd.DataFrame({"id": ["a", "b"], "mag_g_desi": [20.0, 21.0], "mag_r_desi": [19.5, 20.0], "mag_z_desi": [19.0, 19.9]})
    meta.to_parquet(tmp_path / "m.parquet")
    out = pipeline.read_metadata(tmp_path / "m.parquet")
    assert out["g_r"].tolist() == [0.5, 1.0] and out["r_z"].round(6).tolist() == [0.5, 0.1]
    meta.assign(g_r=[9.0, 9.0]).drop(columns="mag_z_desi").to_parquet(tmp_path / "n.parquet")
    out = pipeline.read_metadata(tmp_path / "n.parquet")
    assert out["g_r"].tolist() == [9.0, 9.0] and "r_z" not in out  # kept as given; not derivable


def test_collect_rejected_keeps_every_id_as_text(tmp_path):
    cols = "id,image_path,reason\n"
    (tmp_path / "d.csv").write_text(cols + "nan,x.png,no metadata row\n")
    (tmp_path / "t.csv").write_text(cols + "007,y.fits,NaN pixels: 3\n")
    (tmp_path / "v.csv").write_text(cols)
    table = pipeline.collect_rejected(tmp_path / "d.csv", {"train": tmp_path / "t.csv", "validation": tmp_path / "v.csv"}, tmp_path / "all.csv", log=lambda *a: None)
    assert table["id"].tolist() == ["nan", "007"] and table["stage"].tolist() == ["download", "tokenise"]
    assert pd.read_csv(tmp_path / "all.csv", dtype=str, keep_default_na=False)["id"].tolist() == ["nan", "007"]
