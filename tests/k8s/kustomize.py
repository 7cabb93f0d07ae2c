"""A small, strict renderer of the kustomize features k8s/ uses, so manifests are tested without a cluster or the
kustomize binary: resources (files and folders), namespace, labels, configMapGenerator (files, options),
images, and patches in JSON 6902 form. Anything else in a kustomization is an error, never silently ignored."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonpatch
import yaml

SUPPORTED = {"apiVersion", "kind", "resources", "namespace", "labels", "configMapGenerator", "images", "patches"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}


def render(folder: Path) -> list[dict[str, Any]]:
    k = yaml.safe_load((folder / "kustomization.yaml").read_text())
    unknown = set(k) - SUPPORTED
    if unknown:
        raise ValueError(f"{folder}: kustomization fields this renderer does not implement: {sorted(unknown)}")
    objects: list[dict[str, Any]] = []
    for resource in k.get("resources", []):
        path = (folder / resource).resolve()
        if path.is_dir():
            objects += render(path)
        else:
            objects += [d for d in yaml.safe_load_all(path.read_text()) if d]
    for gen in k.get("configMapGenerator", []):
        options = gen.get("options", {})
        if not options.get("disableNameSuffixHash"):
            raise ValueError(f"{folder}: configMapGenerator {gen['name']} must set disableNameSuffixHash")
        data = {}
        for entry in gen.get("files", []):
            key, _, name = entry.partition("=") if "=" in entry else (Path(entry).name, "", entry)
            source = (folder / (name or entry)).resolve()
            if folder.resolve() not in source.parents:
                raise ValueError(f"{folder}: {entry} is outside the kustomization root (kustomize refuses it)")
            data[key] = source.read_text()
        objects.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": gen["name"], "labels": dict(options.get("labels", {}))},
                "data": data,
            }
        )
    for patch in k.get("patches", []):
        target = patch["target"]
        ops = yaml.safe_load(patch["patch"])
        matches = [o for o in objects if o["kind"] == target["kind"] and o["metadata"]["name"] == target["name"]]
        if not matches:
            raise ValueError(f"{folder}: patch target {target} matches nothing")
        for o in matches:
            o.update(jsonpatch.apply_patch(copy.deepcopy(o), ops))
    for image in k.get("images", []):
        for o in objects:
            _set_images(o, image)
    for o in objects:
        if "namespace" in k and o["kind"] not in CLUSTER_SCOPED:
            o["metadata"]["namespace"] = k["namespace"]
        for label in k.get("labels", []):
            o["metadata"].setdefault("labels", {}).update(label["pairs"])
    return objects


def _set_images(node: Any, image: dict[str, str]) -> None:
    if isinstance(node, dict):
        if isinstance(node.get("image"), str) and node["image"].rsplit(":", 1)[0] == image["name"]:
            node["image"] = f"{image.get('newName', image['name'])}:{image['newTag']}"
        for value in node.values():
            _set_images(value, image)
    elif isinstance(node, list):
        for value in node:
            _set_images(value, image)
