"""The KubeRay v1.7.0 operator's admission rules that the CRD schemas cannot express, as its validation code
applies them when it reconciles an object (ray-operator/controllers/ray/utils/validation.go, features.go): which
fields need a feature gate, and which RayJob settings it refuses together."""

from __future__ import annotations

from typing import Any

import yaml

# The operator's feature gates and their defaults in v1.7.0 (alpha gates are off until the operator is started
# with --feature-gates or the Helm chart's `featureGates` turns them on).
DEFAULT_GATES = {
    "RayClusterStatusConditions": True,
    "RayJobDeletionPolicy": True,
    "RayMultiHostIndexing": True,
    "RayServiceIncrementalUpgrade": True,
    "RayCronJob": False,
    "SidecarSubmitterRestart": False,
    "RayClusterNetworkPolicy": False,
    "GCSFaultToleranceEmbeddedStorage": False,
    "RayClusterMTLS": False,
    "RayClusterHistoryServer": False,
    "KubernetesWAS": False,
}


def cluster_specs(obj: dict[str, Any]) -> list[dict[str, Any]]:
    """The RayCluster specs inside an object: a RayCluster's own, a RayJob's or a RayService's."""
    spec = obj.get("spec", {})
    return [s for s in (spec, spec.get("rayClusterSpec"), spec.get("rayClusterConfig")) if s and "headGroupSpec" in s]


def gates_needed(obj: dict[str, Any]) -> set[str]:
    """The feature gates the operator requires before it accepts `obj`."""
    gates = {"RayCronJob"} if obj["kind"] == "RayCronJob" else set()
    for spec in cluster_specs(obj):
        if spec.get("gcsFaultToleranceOptions", {}).get("backend") == "rocksdb":
            gates.add("GCSFaultToleranceEmbeddedStorage")
        for field, gate in (
            ("networkPolicy", "RayClusterNetworkPolicy"),
            ("tlsOptions", "RayClusterMTLS"),
            ("historyServerOptions", "RayClusterHistoryServer"),
        ):
            if field in spec:
                gates.add(gate)
    if obj["kind"] == "RayJob" and "deletionStrategy" in obj["spec"]:
        gates.add("RayJobDeletionPolicy")
    return gates


def rayjob_errors(spec: dict[str, Any]) -> list[str]:
    """What the operator's RayJob validation refuses in `spec` (empty: accepted)."""
    errors = []
    shutdown, ttl = spec.get("shutdownAfterJobFinishes", False), spec.get("ttlSecondsAfterFinished", 0)
    mode = spec.get("submissionMode", "K8sJobMode")
    if spec.get("suspend") and not shutdown:
        errors.append("suspend needs shutdownAfterJobFinishes")
    if ttl < 0:
        errors.append("ttlSecondsAfterFinished must be >= 0")
    if not shutdown and ttl > 0:
        errors.append("ttlSecondsAfterFinished needs shutdownAfterJobFinishes")
    strategy = spec.get("deletionStrategy")
    if strategy is not None:
        legacy = "onSuccess" in strategy or "onFailure" in strategy
        rules = bool(strategy.get("deletionRules"))
        if rules and shutdown:
            errors.append("deletionStrategy.deletionRules and shutdownAfterJobFinishes are mutually exclusive")
        if rules and legacy:
            errors.append("deletionStrategy: deletionRules and onSuccess/onFailure are mutually exclusive")
        if not rules and not ("onSuccess" in strategy and "onFailure" in strategy):
            errors.append("deletionStrategy needs both onSuccess and onFailure, or deletionRules")
    if "rayClusterSpec" not in spec and not spec.get("clusterSelector"):
        errors.append("one of rayClusterSpec or clusterSelector must be set")
    if mode == "SidecarMode" and ("submitterPodTemplate" in spec or "submitterConfig" in spec):
        errors.append("SidecarMode takes no submitterPodTemplate or submitterConfig")
    if mode == "InteractiveMode" and spec.get("backoffLimit", 0) > 0:
        errors.append("backoffLimit is incompatible with InteractiveMode")
    for field in ("activeDeadlineSeconds", "preRunningDeadlineSeconds"):
        if field in spec and spec[field] <= 0:
            errors.append(f"{field} must be positive")
    if spec.get("backoffLimit", 0) < 0:
        errors.append("backoffLimit must be >= 0")
    if "runtimeEnvYAML" in spec and not isinstance(yaml.safe_load(spec["runtimeEnvYAML"]), dict):
        errors.append("runtimeEnvYAML must be a YAML mapping")
    return errors
