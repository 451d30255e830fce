"""The part of KubeRay's ray.io/v1 CRDs that a jamsweep manifest uses, as JSON Schema.

Written from KubeRay's API types (ray-operator/apis/ray/v1/raycluster_types.go and
rayjob_types.go, KubeRay 1.1-1.3): a field without `omitempty` in its json tag is required,
and the CRD's structural schema prunes unknown fields silently, so here an unknown field is
an error (a typo would otherwise vanish on `kubectl apply`). The pod templates inside are
Kubernetes' own PodTemplateSpec: tests/test_deploy.py checks those with kubernetes-validate.
"""

from __future__ import annotations

from typing import Any

_STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_INT32 = {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}
_POD_TEMPLATE = {
    "type": "object",
    "required": ["spec"],
    "properties": {
        "metadata": {"type": "object"},
        "spec": {"type": "object", "required": ["containers"]},
    },
    "additionalProperties": False,
}

HEAD_GROUP_SPEC = {
    "type": "object",
    "required": ["rayStartParams", "template"],
    "properties": {
        "serviceType": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]},
        "headService": {"type": "object"},
        "enableIngress": {"type": "boolean"},
        "rayStartParams": _STR_MAP,
        "template": _POD_TEMPLATE,
    },
    "additionalProperties": False,
}

WORKER_GROUP_SPEC = {
    "type": "object",
    "required": ["groupName", "minReplicas", "maxReplicas", "rayStartParams", "template"],
    "properties": {
        "groupName": {"type": "string", "minLength": 1},
        "replicas": _INT32,
        "minReplicas": _INT32,
        "maxReplicas": _INT32,
        "numOfHosts": _INT32,
        "rayStartParams": _STR_MAP,
        "template": _POD_TEMPLATE,
        "scaleStrategy": {"type": "object"},
    },
    "additionalProperties": False,
}

AUTOSCALER_OPTIONS = {
    "type": "object",
    "properties": {
        "resources": {"type": "object"},
        "image": {"type": "string"},
        "imagePullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
        "env": {"type": "array", "items": {"type": "object", "required": ["name"]}},
        "envFrom": {"type": "array"},
        "volumeMounts": {"type": "array"},
        "securityContext": {"type": "object"},
        "idleTimeoutSeconds": _INT32,
        "upscalingMode": {"enum": ["Default", "Aggressive", "Conservative"]},
    },
    "additionalProperties": False,
}

RAY_CLUSTER_SPEC = {
    "type": "object",
    "required": ["headGroupSpec"],
    "properties": {
        "headGroupSpec": HEAD_GROUP_SPEC,
        "workerGroupSpecs": {"type": "array", "items": WORKER_GROUP_SPEC},
        "rayVersion": {"type": "string"},
        "enableInTreeAutoscaling": {"type": "boolean"},
        "autoscalerOptions": AUTOSCALER_OPTIONS,
        "headServiceAnnotations": _STR_MAP,
        "suspend": {"type": "boolean"},
    },
    "additionalProperties": False,
}

RAY_JOB_SPEC = {
    "type": "object",
    "properties": {
        "activeDeadlineSeconds": {"type": "integer", "minimum": 1},
        "backoffLimit": _INT32,
        "rayClusterSpec": RAY_CLUSTER_SPEC,
        "submitterPodTemplate": _POD_TEMPLATE,
        "metadata": _STR_MAP,
        "clusterSelector": _STR_MAP,
        "submitterConfig": {"type": "object"},
        "managedBy": {"enum": ["ray.io/kuberay-operator", "kueue.x-k8s.io/multikueue"]},
        "deletionStrategy": {"type": "object"},
        "entrypoint": {"type": "string"},
        "runtimeEnvYAML": {"type": "string"},
        "jobId": {"type": "string"},
        "submissionMode": {"enum": ["K8sJobMode", "HTTPMode", "InteractiveMode"]},
        "entrypointResources": {"type": "string"},
        "entrypointNumCpus": {"type": "number"},
        "entrypointNumGpus": {"type": "number"},
        "ttlSecondsAfterFinished": _INT32,
        "shutdownAfterJobFinishes": {"type": "boolean"},
        "suspend": {"type": "boolean"},
    },
    "additionalProperties": False,
    # A RayJob runs on a cluster it creates or on one it selects.
    "oneOf": [{"required": ["rayClusterSpec"]}, {"required": ["clusterSelector"]}],
}


def _object(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "ray.io/v1"},
            "kind": {"const": kind},
            "metadata": {
                "type": "object",
                "required": ["name"],
                # a DNS-1123 label: KubeRay names the head Service NAME-head-svc from it
                "properties": {
                    "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"}
                },
            },
            "spec": spec,
        },
        "additionalProperties": False,
    }


SCHEMAS = {
    "RayCluster": _object("RayCluster", RAY_CLUSTER_SPEC),
    "RayJob": _object("RayJob", RAY_JOB_SPEC),
}
