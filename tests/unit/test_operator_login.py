"""The operator in a pod finds the API server as client-go does, without cluster DNS."""

from __future__ import annotations

from labkeeper.controller.main import in_cluster_server


def test_the_operator_pod_uses_the_service_address_the_kubelet_gave_it():
    env = {"KUBERNETES_SERVICE_HOST": "10.43.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    assert in_cluster_server(env, "https://kubernetes.default.svc") == "https://10.43.0.1:443"
    assert in_cluster_server({"KUBERNETES_SERVICE_HOST": "fd00:10:43::1"}, "") == "https://[fd00:10:43::1]:443"


def test_outside_a_pod_the_login_keeps_what_kopf_found():
    assert in_cluster_server({}, "https://kubernetes.default.svc") == "https://kubernetes.default.svc"
