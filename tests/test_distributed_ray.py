"""The README's Ray Data recipe, run as written on one machine (a local Ray cluster of one CPU):

    ds = ds.map_batches(BatchExplainer, fn_constructor_args=(graph,), batch_format="numpy")

Reference: `Explainer.explain` (and `run` for the logits) of the explainer whose saved graph the
workers run, on the same images and targets (−1 resolved to the reference's top-1). Tolerance
rtol 1e-4 plus atol 1e-5 of each array's largest magnitude: the worker runs the saved graph
(portable standard ops; the in-process explainer may use the fused custom ops) on Ray's blocks
(one image each here) with one thread, the reference the 10-image batch, so ONNX Runtime sums
float32 products in other orders (measured: logits off by up to 1.4e-6 of |logits| ≤ 1.3; the maps
agreed within rtol 1e-5); a wrong image, target or map column is off by O(1).
"""

from __future__ import annotations

import numpy as np
import pytest

import onnx_saliency as osal
from conftest import export_torchvision

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


def test_ray_data_recipe_maps_the_saved_graph_over_a_dataset(tmp_path, local_ray):
    from onnx_saliency.distributed import BatchExplainer

    path = tmp_path / "r18.onnx"
    export_torchvision("resnet18", path, 32)
    ex = osal.Explainer(path, methods=["gradient", "gradcam"])
    ex.save(tmp_path / "explainer.onnx")
    graph = open(tmp_path / "explainer.onnx", "rb").read()
    rng = np.random.default_rng(5)
    images = rng.standard_normal((10, 3, 32, 32)).astype(np.float32)
    targets = np.concatenate([rng.integers(0, 1000, 8), [-1, -1]])    # -1: the top-1
    ds = ray.data.from_items([{"id": i, "image": images[i], "target": targets[i]}
                              for i in range(len(images))])
    ds = ds.map_batches(BatchExplainer, fn_constructor_args=(graph,), batch_format="numpy")
    rows = sorted(ds.take_all(), key=lambda row: row["id"])     # Ray does not promise order
    assert [r["id"] for r in rows] == list(range(10))
    logits = ex.run(images, None)["logits"]          # the graph's −1: the top-1 of these
    expected = ex.explain(images, np.where(targets < 0, logits.argmax(1), targets))
    assert list(expected) == ex.map_names and len(ex.map_names) == 2   # gradient, gradcam@<layer>
    for key, want in [*expected.items(), ("logits", logits)]:
        got = np.stack([r[key] for r in rows])
        assert got.shape == want.shape, key
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max(), err_msg=key)
    np.testing.assert_array_equal(np.stack([r["image"] for r in rows]), images)
