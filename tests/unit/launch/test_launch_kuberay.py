"""The RayJob manifest against KubeRay's CRD schema (vendored launch/kuberay/ray.io_rayjobs.yaml)."""

from __future__ import annotations

import copy
import functools

import jsonschema
import pytest
import yaml

from rlpost.commands.launch import kuberay
from rlpost.commands.launch.cli import main
from rlpost.config import ConfigError


def manifest(**kw):
    args = dict(
        recipe="launch/recipes/grpo_tiny.yaml",
        image="ghcr.io/example/rlpost:0.1",
        overrides=["trainer.steps=2"],
        workers=2,
        gpus_per_worker=8,
        worker_resources={"rlpost_pool": 1000},
    )
    return kuberay.build(kuberay.KubeRayJob(**{**args, **kw}))


@functools.cache
def crd_validator():
    """jsonschema's own validator for the CRD's openAPIV3Schema (itself checked once: 1.5 s)."""
    v = kuberay.load_crd()["spec"]["versions"][0]
    assert v["name"] == "v1"
    schema = v["schema"]["openAPIV3Schema"]
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def test_manifest_validates_against_the_crd_schema():
    m = manifest()
    crd_validator().validate(m)  # the CRD as published, with jsonschema's own validator
    assert kuberay.validation_errors(m, strict=True) == []  # and with unknown fields forbidden
    spec = m["spec"]
    assert m["apiVersion"] == "ray.io/v1" and m["kind"] == "RayJob"
    assert m["metadata"]["name"] == "rlpost-grpo-tiny"
    assert spec["entrypoint"] == "rlpost train launch/recipes/grpo_tiny.yaml trainer.steps=2"
    worker = spec["rayClusterSpec"]["workerGroupSpecs"][0]
    assert (worker["replicas"], worker["minReplicas"], worker["maxReplicas"]) == (2, 2, 2)
    limits = worker["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits == {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": 8}
    assert worker["rayStartParams"]["resources"] == '"{\\"rlpost_pool\\": 1000}"'
    head = spec["rayClusterSpec"]["headGroupSpec"]
    assert head["rayStartParams"] == {"dashboard-host": "0.0.0.0", "num-cpus": "0"}
    assert head["template"]["spec"]["containers"][0]["image"] == "ghcr.io/example/rlpost:0.1"


@pytest.mark.parametrize(
    "breakage, where",
    [
        # rayStartParams values must be strings
        (lambda m: m["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"].update({"num-cpus": 0}), "rayStartParams/num-cpus"),
        # replicas is an integer
        (lambda m: m["spec"]["rayClusterSpec"]["workerGroupSpecs"][0].update(replicas="two"), "workerGroupSpecs/0/replicas"),
        # a worker group needs a groupName
        (lambda m: m["spec"]["rayClusterSpec"]["workerGroupSpecs"][0].pop("groupName"), "workerGroupSpecs/0"),
        # quantities follow the Kubernetes pattern
        (lambda m: m["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]["limits"].update(memory="lots"), "limits/memory"),
        # containers need a name
        (lambda m: m["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0].pop("name"), "containers/0"),
        # the head group is required
        (lambda m: m["spec"]["rayClusterSpec"].pop("headGroupSpec"), "rayClusterSpec"),
    ],
)  # fmt: skip
def test_broken_manifests_fail_the_crd_schema(breakage, where):
    m = copy.deepcopy(manifest())
    breakage(m)
    with pytest.raises(jsonschema.ValidationError):
        crd_validator().validate(m)
    errors = kuberay.validation_errors(m, strict=False)
    assert errors and any(where in e for e in errors), errors
    with pytest.raises(ConfigError, match="does not match the KubeRay CRD"):
        kuberay.validate(m)


def test_strict_mode_catches_a_misspelt_field_that_kubernetes_would_drop():
    m = manifest()
    m["spec"]["shutdownAfterJobFinish"] = True  # missing the final 's'
    assert kuberay.validation_errors(m, strict=False) == []  # the open schema lets it through
    errors = kuberay.validation_errors(m, strict=True)
    assert len(errors) == 1 and "shutdownAfterJobFinish" in errors[0]


def test_single_node_manifest_and_options():
    m = manifest(workers=0, head_cpus=16, working_dir_uri="s3://bucket/code.zip", namespace="ml")
    assert kuberay.validation_errors(m) == []
    cluster = m["spec"]["rayClusterSpec"]
    assert cluster["workerGroupSpecs"] == []
    assert "num-cpus" not in cluster["headGroupSpec"]["rayStartParams"]  # the head does the work
    assert yaml.safe_load(m["spec"]["runtimeEnvYAML"]) == {"working_dir": "s3://bucket/code.zip"}
    assert m["metadata"]["namespace"] == "ml"
    with pytest.raises(ConfigError, match="--memory-per-worker"):
        manifest(memory_per_worker="32 gigs")
    with pytest.raises(ConfigError, match="--image"):
        kuberay.build(kuberay.KubeRayJob(recipe="r.yaml", image=""))


def test_cli_writes_a_valid_manifest(tmp_path, capsys):
    recipe = tmp_path / "my_recipe.yaml"
    recipe.write_text(
        "model: {path: x}\nrollout: {gpus_per_engine: 1}\nlearner: {gpus_per_rank: 1}\n"
    )
    out = tmp_path / "rayjob.yaml"
    rc = main(["launch", "kuberay", str(recipe), "trainer.steps=3", "--image", "img:1",
               "--workers", "1", "--gpus-per-worker", "2", "--out", str(out)])  # fmt: skip
    assert rc == 0
    m = yaml.safe_load(out.read_text())
    assert kuberay.validation_errors(m) == []
    assert m["spec"]["entrypoint"].endswith("my_recipe.yaml trainer.steps=3")
    assert m["metadata"]["name"] == "rlpost-my-recipe"
    rc = main(["launch", "kuberay", str(recipe), "--image", "img:1", "--workers", "1",
               "--gpus-per-worker", "1", "--out", str(tmp_path / "no.yaml")])  # fmt: skip
    assert rc == 2 and "short of GPU=1" in capsys.readouterr().err
