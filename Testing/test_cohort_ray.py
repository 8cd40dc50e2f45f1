"""`unetseg predict --ray` on a local Ray instance this module starts (loopback only, 2 CPUs) and stops."""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
import SimpleITK as sitk
from cohort_cases import assert_outputs, case_image, log_of, predict, write_cases
from echo_model import echo_package

from unetseg.image import Image
from unetseg.jobs.ray_cluster import LOCAL_ENVIRONMENT, LOCAL_OBJECT_STORE_BYTES
from unetseg.jobs.runner import EXIT_SOME_FAILED

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="Ray is the optional [cluster] extra"),
]


@pytest.fixture(scope="module")
def local_ray():
    """A private Ray instance on 127.0.0.1 with 2 CPUs (so 2 actors of 1 CPU), shut down after the module."""
    saved = {name: os.environ.get(name) for name in LOCAL_ENVIRONMENT}
    os.environ.update(LOCAL_ENVIRONMENT)  # before ray is imported: it reads them then
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=LOCAL_OBJECT_STORE_BYTES,
             logging_level="WARNING", log_to_driver=False)  # fmt: skip
    try:
        assert ray.nodes()[0]["NodeManagerAddress"] == "127.0.0.1"  # loopback only
        yield ray
    finally:
        ray.shutdown()
        for name, value in saved.items():
            os.environ.pop(name) if value is None else os.environ.__setitem__(name, value)


def test_a_cohort_on_ray_follows_the_same_rules(local_ray, tmp_path, capsys):
    model = echo_package(tmp_path / "echo")
    expected = write_cases(tmp_path / "in", 3)
    nan = case_image(7)[0].array.copy()
    nan[1, 2, 3] = np.nan
    sitk.WriteImage(Image(nan).to_sitk(), str(tmp_path / "in" / "nan.nrrd"))
    out = tmp_path / "out"
    code, events = predict(capsys, tmp_path / "in", model.path, out, "--ray", "--cpus-per-worker", "1")
    assert code == EXIT_SOME_FAILED and (events[-2]["succeeded"], events[-2]["failed"]) == (3, 1)
    assert_outputs(out, expected)
    records = log_of(out)
    assert "NaN or infinite" in next(r["error"] for r in records if r["case"] == "nan")
    workers = {r["worker"] for r in records}
    assert 1 <= len(workers) <= 2 and not any(w.endswith(f":{os.getpid()}") for w in workers)
    assert {r["device"] for r in records} == {"cpu"}
    code, events = predict(capsys, tmp_path / "in", model.path, out, "--ray", "--cpus-per-worker", "1")
    assert code == EXIT_SOME_FAILED and (events[-2]["skipped"], events[-2]["failed"]) == (3, 1)
    assert local_ray.is_initialized()  # the test's connection is used and left open
