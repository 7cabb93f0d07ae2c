"""Every manifest and overlay renders, validates against the Kubernetes API schemas and the KubeRay v1.7.0 CRDs,
names only things that exist (import paths, CLI commands, versions), and ships no secret or open door."""

import copy
import importlib
import importlib.util
import json
import re
import shlex
import tomllib
from functools import cache
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.k8s.kustomize import render
from tests.k8s.operator_rules import DEFAULT_GATES, cluster_specs, gates_needed, rayjob_errors

ROOT = Path(__file__).parents[2]
K8S = ROOT / "k8s"
CRDS = Path(__file__).parent / "crds"
KUSTOMIZATIONS = ["base", "overlays/cpu-small", "overlays/gpu-prod", "overlays/gcs-ft-embedded", "rayjob", "serving"]
GATED = {"overlays/gcs-ft-embedded"}  # the kustomizations that need an operator gate that is off by default
KUBERNETES_VERSION = "1.33.0"
SECRET_NAME = re.compile(r"(TOKEN|PASSWORD|SECRET|ACCESS_KEY|CREDENTIAL)", re.I)


@cache
def rendered(name):
    return render(K8S / name)


def all_objects():
    return [(name, o) for name in KUSTOMIZATIONS for o in rendered(name)]


def mappings(node):
    """Every mapping in a parsed YAML/JSON tree, parents before children."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from mappings(value)
    elif isinstance(node, list):
        for value in node:
            yield from mappings(value)


def _strict(schema):
    """The CRD's structural schema, refusing unknown fields as `kubectl apply --validate=strict` does."""
    schema = copy.deepcopy(schema)
    for node in mappings(schema):
        if (
            "properties" in node
            and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")
        ):
            node["additionalProperties"] = False
    return schema


@cache
def crd_schemas():
    schemas = {}
    for path in CRDS.glob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
        schemas[crd["spec"]["names"]["kind"]] = _strict(version["schema"]["openAPIV3Schema"])
    return schemas


def containers(obj):
    """Every container spec inside an object, wherever its pod templates are."""
    return [c for node in mappings(obj) for key in ("containers", "initContainers") for c in _list(node.get(key))]


def pod_specs(obj):
    return [node for node in mappings(obj) if isinstance(node.get("containers"), list)]


def _list(value):
    return value if isinstance(value, list) else []


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_kustomization_renders(name):
    objects = rendered(name)
    assert objects
    keys = [(o["kind"], o["metadata"]["name"]) for o in objects]
    assert len(keys) == len(set(keys)), f"duplicate objects in {name}"


@pytest.mark.parametrize(("name", "obj"), all_objects(), ids=lambda v: v if isinstance(v, str) else v["kind"])
def test_objects_validate_against_their_schemas(name, obj):
    kind = obj["kind"]
    if kind in crd_schemas():
        assert obj["apiVersion"] == "ray.io/v1"
        jsonschema.validate(obj, crd_schemas()[kind])
    elif obj["apiVersion"].startswith("monitoring.coreos.com/"):
        # The Prometheus Operator's CRDs are not vendored; check the fields it requires.
        assert kind == "PodMonitor" and obj["spec"]["selector"]["matchLabels"]
        assert all(e["port"] for e in obj["spec"]["podMetricsEndpoints"])
    else:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_overlays_change_what_they_say():
    def cluster(name):
        return next(o for o in rendered(name) if o["kind"] == "RayCluster")

    small, prod = cluster("overlays/cpu-small"), cluster("overlays/gpu-prod")
    small_workers = [g["template"]["spec"]["containers"][0] for g in small["spec"]["workerGroupSpecs"]]
    assert all("nvidia.com/gpu" not in c["resources"]["limits"] for c in small_workers)
    assert all(c["image"].endswith("-cpu") for c in containers(small))
    assert (
        prod["spec"]["workerGroupSpecs"][1]["template"]["spec"]["containers"][0]["resources"]["limits"][
            "nvidia.com/gpu"
        ]
        == "2"
    )
    control = next(o for o in rendered("overlays/cpu-small") if o["kind"] == "Deployment")
    env = [e["name"] for e in control["spec"]["template"]["spec"]["containers"][0]["env"]]
    assert env.index("POSTGRES_PASSWORD") < env.index("SPIN_DATABASE_URL")  # $(POSTGRES_PASSWORD) resolves
    assert any(o["kind"] == "StatefulSet" for o in rendered("overlays/cpu-small"))
    assert not any(o["kind"] == "StatefulSet" for o in rendered("overlays/gpu-prod"))


def test_only_the_gated_overlay_needs_an_operator_feature_gate_and_it_says_how_to_enable_it():
    readme = (K8S / "README.md").read_text()
    values = yaml.safe_load((K8S / "operator" / "values.yaml").read_text())
    enabled = {g["name"]: g["enabled"] for g in values["featureGates"]}
    assert {g for g, on in DEFAULT_GATES.items() if on} <= {g for g, on in enabled.items() if on}, (
        "Helm replaces the featureGates list: the values file must keep the defaults on"
    )
    for name in KUSTOMIZATIONS:
        off_by_default = {g for o in rendered(name) for g in gates_needed(o) if not DEFAULT_GATES[g]}
        if name not in GATED:
            assert not off_by_default, f"{name} needs {off_by_default}: a default operator rejects it"
            continue
        assert off_by_default, f"{name} is listed as gated but needs no gate"
        for gate in off_by_default:
            assert enabled.get(gate) is True, f"k8s/operator/values.yaml does not enable {gate}"
            section = readme[readme.index(f"`{name}`") :]
            assert gate in section[:1500], f"k8s/README.md does not name {gate} beside {name}"


def test_the_rayjob_is_one_the_operator_accepts():
    job = next(o for o in rendered("rayjob") if o["kind"] == "RayJob")
    assert rayjob_errors(job["spec"]) == []
    assert job["spec"]["preRunningDeadlineSeconds"] <= 2 * 3600
    assert yaml.safe_load(job["spec"]["runtimeEnvYAML"])["env_vars"]
    (submitter,) = job["spec"]["submitterPodTemplate"]["spec"]["containers"]
    assert submitter["image"].endswith("-cpu"), "the submitter needs the ray CLI only, not the GPU image"
    assert "nvidia.com/gpu" not in submitter["resources"]["limits"]
    assert "command" not in submitter, "the operator builds the submit command from entrypoint and runtimeEnvYAML"


def test_the_operator_rules_catch_mistakes():
    """Rules that accepted anything would make the two tests above vacuous."""
    job = copy.deepcopy(next(o for o in rendered("rayjob") if o["kind"] == "RayJob"))
    rule = {"policy": "DeleteCluster", "condition": {"jobStatus": "SUCCEEDED"}}
    job["spec"]["deletionStrategy"] = {"deletionRules": [rule]}
    assert any("mutually exclusive" in e for e in rayjob_errors(job["spec"]))
    job["spec"]["preRunningDeadlineSeconds"] = 0
    assert any("preRunningDeadlineSeconds" in e for e in rayjob_errors(job["spec"]))
    cluster = copy.deepcopy(next(o for o in rendered("base") if o["kind"] == "RayCluster"))
    cluster["spec"]["gcsFaultToleranceOptions"] = {"backend": "rocksdb"}
    assert gates_needed(cluster) == {"GCSFaultToleranceEmbeddedStorage"}


def test_the_paper_configs_placement_resources_are_advertised_by_the_groups_meant_for_them():
    from jobs.config import SpinConfig

    cfg = SpinConfig.from_yaml_text((ROOT / "jobs" / "configs" / "zephyr_paper.yaml").read_text())
    for name in ("base", "overlays/gpu-prod"):
        cluster = next(o for o in rendered(name) if o["kind"] == "RayCluster")
        # rayStartParams values are passed to `ray start` as written: a quoted JSON string.
        groups = {
            g["groupName"]: json.loads(json.loads(g["rayStartParams"].get("resources", '"{}"')))
            for g in cluster["spec"]["workerGroupSpecs"]
        }
        assert groups["train"] == cfg.train.resources_per_worker
        assert groups["generate"] == cfg.generator.resources


def test_serve_import_paths_build_their_applications_through_serves_loader():
    """Serve's own loader (behind `serve run`, config deploys and a RayService's serveConfigV2) takes the builder
    and the manifest's args: one parameter, its args turned into the annotated pydantic class."""
    from ray.serve import Application
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary

    built = 0
    for name in KUSTOMIZATIONS:
        for o in rendered(name):
            if o["kind"] != "RayService":
                continue
            for app in yaml.safe_load(o["spec"]["serveConfigV2"])["applications"]:
                module, _, attr = app["import_path"].partition(":")
                builder = getattr(importlib.import_module(module), attr)
                assert isinstance(call_user_app_builder_with_args_if_necessary(builder, app["args"]), Application)
                built += 1
    assert built


def _commands():
    """Every command line a manifest runs: container commands and RayJob entrypoints."""
    for name, o in all_objects():
        if o["kind"] == "RayJob":
            yield name, o, shlex.split(o["spec"]["entrypoint"])
        for c in containers(o):
            if "command" in c:
                yield name, o, c["command"] + c.get("args", [])


def test_entrypoints_are_the_projects_cli_with_valid_options():
    import click
    import typer

    from jobs.cli import app

    cli = typer.main.get_command(app)
    seen = 0
    for name, obj, argv in _commands():
        if argv[:3] != ["python", "-m", "jobs"]:
            continue
        seen += 1
        command = cli.get_command(click.Context(cli), argv[3])
        assert command is not None, f"{name}: unknown command {argv[3]!r}"
        command.make_context(argv[3], list(argv[4:]))  # raises on unknown or malformed options
        if obj["kind"] == "RayJob":
            config_path = Path(argv[4])
            mounts = {m["mountPath"]: m["name"] for c in containers(obj) for m in c.get("volumeMounts", [])}
            volume = mounts[str(config_path.parent)]
            config_map = next(
                v["configMap"]["name"] for p in pod_specs(obj) for v in p.get("volumes", []) if v["name"] == volume
            )
            data = next(o for o in rendered(name) if o["kind"] == "ConfigMap" and o["metadata"]["name"] == config_map)
            from jobs.config import SpinConfig

            SpinConfig.from_yaml_text(data["data"][config_path.name])
    assert seen >= 2


def test_versions_named_in_images_and_manifests_equal_the_pins():
    import platform

    import ray

    pins = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    ray_pin = next(p for p in pins if p.startswith("ray[")).split("==")[1]
    assert ray.__version__ == ray_pin
    for _, o in all_objects():
        spec = o.get("spec", {})
        for cluster in (spec, spec.get("rayClusterSpec", {}), spec.get("rayClusterConfig", {})):
            if "rayVersion" in cluster:
                assert cluster["rayVersion"] == ray_pin
    dockerfile = (ROOT / "cluster" / "Dockerfile").read_text()
    assert f"ARG RAY_VERSION={ray_pin}" in dockerfile
    python_tag = "py" + "".join(platform.python_version_tuple()[:2])
    assert set(re.findall(r"rayproject/ray:\$\{RAY_VERSION\}-(py\d+)", dockerfile)) == {python_tag}
    launcher = yaml.safe_load((ROOT / "cluster" / "launcher.yaml").read_text())
    assert launcher["docker"]["image"].startswith("ghcr.io/spin-ray/spin-ray:")


def test_no_secret_values_no_root_and_nothing_exposed():
    for name, o in all_objects():
        where = f"{name}: {o['kind']}/{o['metadata']['name']}"
        assert o["kind"] != "Secret", f"{where} ships a Secret; reference one instead"
        assert o["kind"] not in ("Ingress", "Route"), f"{where} exposes a service"
        if o["kind"] == "Service":
            assert o["spec"].get("type", "ClusterIP") == "ClusterIP", f"{where} is reachable from outside"
        for c in containers(o):
            for env in c.get("env", []):
                if SECRET_NAME.search(env["name"]) and env["name"] != "RAY_AUTH_MODE":
                    assert "valueFrom" in env, f"{where}: {env['name']} carries a literal value"
            assert c["securityContext"]["allowPrivilegeEscalation"] is False, where
            assert "resources" in c and c["resources"]["limits"] and c["resources"]["requests"], where
        for pod in pod_specs(o):
            assert pod["securityContext"]["runAsNonRoot"] is True, where
        for cluster in cluster_specs(o):
            assert cluster["authOptions"]["mode"] == "token", f"{where}: the dashboard needs token auth"
            assert cluster["headGroupSpec"].get("serviceType", "ClusterIP") == "ClusterIP", where
            assert not cluster["headGroupSpec"].get("enableIngress"), where
    control = next(o for o in rendered("base") if o["kind"] == "Deployment")
    env = {e["name"]: e for e in control["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["SPIN_API_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert env["RAY_AUTH_MODE"]["value"] == "token" and env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]


def ingress_allows(policy, port, labels):
    """Whether a NetworkPolicy's ingress rules let a pod with `labels` reach `port` (a peer without a podSelector,
    such as `namespaceSelector: {}`, is every pod)."""
    for rule in policy["ingress"]:
        ranges = [(p["port"], p.get("endPort", p["port"])) for p in rule["ports"]]
        peers = [p.get("podSelector", {}).get("matchLabels", {}) for p in rule["from"]]
        if any(lo <= port <= hi for lo, hi in ranges) and any(m.items() <= labels.items() for m in peers):
            return True
    return False


def test_only_the_control_plane_reaches_the_serve_proxy_of_every_cluster_that_runs_iterations():
    """Serve's HTTP proxy (the runs' OpenAI routes) has no authentication: in every rendering that has the base's
    cluster, a policy lets only the control plane's pods reach the head's serve port, and leaves the others open."""
    for name in ("base", "overlays/cpu-small", "overlays/gpu-prod", "overlays/gcs-ft-embedded"):
        objects = rendered(name)
        cluster = next(o for o in objects if o["kind"] == "RayCluster")
        head = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
        serve_port = next(p["containerPort"] for p in head["ports"] if p["name"] == "serve")
        control = next(o for o in objects if o["kind"] == "Deployment")
        policy = next(o for o in objects if o["kind"] == "NetworkPolicy")["spec"]
        head_labels = {"ray.io/cluster": cluster["metadata"]["name"], "ray.io/node-type": "head"}
        assert policy["podSelector"]["matchLabels"] == head_labels and policy["policyTypes"] == ["Ingress"], name

        control_labels = control["spec"]["template"]["metadata"]["labels"]
        other_pod = {"app": "anything-else"}
        assert ingress_allows(policy, serve_port, control_labels), name
        assert not ingress_allows(policy, serve_port, other_pod), name
        for port in (p["containerPort"] for p in head["ports"] if p["name"] != "serve"):
            assert ingress_allows(policy, port, other_pod), (name, port)
        settings = {e["name"]: e.get("value") for e in control["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert settings["SPIN_SERVE_URL"].endswith(f":{serve_port}"), name


def test_grafana_dashboard_charts_metrics_the_code_exports():
    from jobs.iteration.monitoring import EXPORTED as exported

    dashboard = json.loads((K8S / "base" / "spin-dashboard.json").read_text())
    used = {m for p in dashboard["panels"] for t in p["targets"] for m in re.findall(r"ray_spin_\w+", t["expr"])}
    assert used and used <= exported, used - exported
    # vLLM's engine metrics, as its Ray stat logger exports them: "vllm:x" becomes ray_vllm_x (+ _total, _bucket).
    engine = {m for p in dashboard["panels"] for t in p["targets"] for m in re.findall(r"ray_vllm_\w+", t["expr"])}
    loggers = Path(importlib.util.find_spec("vllm.v1.metrics.loggers").origin).read_text()
    defined = {f"ray_vllm_{name}" for name in re.findall(r'name="vllm:(\w+)"', loggers)}
    stems = {re.sub(r"_(total|bucket|sum|count)$", "", m) for m in engine}
    assert engine and stems <= defined, stems - defined
    config_map = next(o for o in rendered("base") if o["kind"] == "ConfigMap")
    assert json.loads(config_map["data"]["spin-dashboard.json"]) == dashboard
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"


def test_the_validators_catch_mistakes():
    """A validator that accepts anything would make the tests above vacuous."""
    cluster = copy.deepcopy(next(o for o in rendered("base") if o["kind"] == "RayCluster"))
    cluster["spec"]["workerGroupSpecs"][0]["maxReplica"] = 3  # typo
    with pytest.raises(jsonschema.ValidationError, match="maxReplica"):
        jsonschema.validate(cluster, crd_schemas()["RayCluster"])
    cluster = copy.deepcopy(next(o for o in rendered("base") if o["kind"] == "RayCluster"))
    cluster["spec"]["authOptions"]["mode"] = "password"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(cluster, crd_schemas()["RayCluster"])
    deployment = copy.deepcopy(next(o for o in rendered("base") if o["kind"] == "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["port"] = 8000
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)
