"""What an admin gets from `helm template`: every template, with the main values switches."""

from __future__ import annotations

import pytest
import yaml
from chartlib import CHART, NAMESPACE, REPO_ROOT, container, rules_allow, run_helm

from labkeeper.render import access as user_access

pytestmark = pytest.mark.unit

EVERY_SWITCH = {
    "operator": {"replicas": 2},
    "runtimeClass": {"create": True},
    "metrics": {"serviceMonitor": {"enabled": True}},
}


def default_values() -> dict:
    return yaml.safe_load((CHART / "values.yaml").read_text())


def test_helm_lint_passes_with_defaults_and_with_every_switch_on(tmp_path):
    switches = tmp_path / "switches.yaml"
    switches.write_text(yaml.safe_dump(EVERY_SWITCH))
    run_helm("lint", "--strict", str(CHART), "--namespace", NAMESPACE)
    run_helm("lint", "--strict", str(CHART), "--namespace", NAMESPACE, "--values", str(switches))


# ---- CRDs ----------------------------------------------------------------------------------------

def test_the_repo_crds_are_installed_and_kept_on_uninstall(render):
    source = {yaml.safe_load(p.read_text())["metadata"]["name"] for p in (REPO_ROOT / "crds").glob("*.yaml")}
    assert source, "crds/ is empty: run `make crds`"
    crds = render().all("CustomResourceDefinition")
    assert {c["metadata"]["name"] for c in crds} == source
    for crd in crds:
        assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def test_crds_can_be_left_to_the_admin_or_removed_with_the_release(render):
    assert render({"crds": {"install": False}}).all("CustomResourceDefinition") == []
    for crd in render({"crds": {"keep": False}}).all("CustomResourceDefinition"):
        assert "helm.sh/resource-policy" not in (crd["metadata"].get("annotations") or {})


# ---- policy --------------------------------------------------------------------------------------

def test_the_policy_configmap_carries_values_policy_and_the_operator_accepts_it(render):
    from labkeeper.api.policy import LabPolicy

    values = default_values()
    values["policy"]["defaults"]["maxWorkspaces"] = 7
    cm = render(values).one("ConfigMap", "labkeeper-policy")
    assert cm["metadata"]["namespace"] == NAMESPACE
    policy = yaml.safe_load(cm["data"]["policy.yaml"])
    assert policy == values["policy"]
    assert LabPolicy.model_validate(policy).defaults.max_workspaces == 7


# ---- operator ------------------------------------------------------------------------------------

def test_the_operator_runs_non_root_read_only_with_requests_and_kopf_health_probes(render):
    deploy = render().one("Deployment", "labkeeper-operator")
    pod = deploy["spec"]["template"]["spec"]
    op = container(deploy, "operator")
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 65532
    assert op["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                     "capabilities": {"drop": ["ALL"]}}
    assert op["resources"]["requests"]["cpu"] and op["resources"]["requests"]["memory"]
    assert op["args"][0] == "operator"
    assert "--liveness=http://0.0.0.0:8080/healthz" in op["args"]
    health_port = next(p for p in op["ports"] if p["name"] == "health")["containerPort"]
    assert health_port == 8080
    for probe in ("livenessProbe", "readinessProbe"):
        assert op[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert pod["serviceAccountName"] == "labkeeper-operator"


def test_one_operator_replica_is_replaced_not_surged_because_the_new_pod_would_wait_on_its_lease(render):
    deploy = render().one("Deployment", "labkeeper-operator")
    assert deploy["spec"]["replicas"] == 1
    assert deploy["spec"]["strategy"]["type"] == "Recreate"
    assert render().all("PodDisruptionBudget") == []


def test_several_operator_replicas_take_turns_on_the_lease(render, render_error):
    message = render_error({"operator": {"replicas": 2, "leaderElection": {"enabled": False}}})
    assert "operator.leaderElection.enabled" in message
    out = render(EVERY_SWITCH)
    deploy = out.one("Deployment", "labkeeper-operator")
    assert "--no-leader-elect" not in container(deploy, "operator")["args"]
    assert deploy["spec"]["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}
    assert out.one("PodDisruptionBudget")["spec"]["minAvailable"] == 1
    lease_rules = out.one("Role", "labkeeper-operator")["rules"]
    assert rules_allow(lease_rules, "coordination.k8s.io", "leases", "update", "labkeeper-operator")
    assert not rules_allow(lease_rules, "coordination.k8s.io", "leases", "update", "kube-scheduler")


def test_a_single_operator_may_skip_the_lease(render):
    deploy = render({"operator": {"leaderElection": {"enabled": False}}}).one("Deployment", "labkeeper-operator")
    assert "--no-leader-elect" in container(deploy, "operator")["args"]


def test_the_operator_is_told_its_namespace_and_where_users_reach_the_api(render):
    deploy = render({"operator": {"apiServerURL": "https://10.0.0.5:6443", "requireHostProvisioning": False}}
                    ).one("Deployment", "labkeeper-operator")
    op = container(deploy, "operator")
    env = {e["name"]: e for e in op["env"]}
    assert env["LABKEEPER_API_SERVER"]["value"] == "https://10.0.0.5:6443"
    assert env["LABKEEPER_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert f"--namespace={NAMESPACE}" in op["args"] and "--no-require-host" in op["args"]
    assert "--data-root=/data" in op["args"]


# ---- agent ---------------------------------------------------------------------------------------

def host_paths(ds: dict) -> dict[str, dict]:
    """host path → the container's mount of it."""
    spec = ds["spec"]["template"]["spec"]
    mounts = {m["name"]: m for m in container(ds, "agent")["volumeMounts"]}
    return {v["hostPath"]["path"]: mounts[v["name"]] for v in spec["volumes"] if "hostPath" in v}


def test_the_agent_gets_exactly_the_host_paths_it_needs(render):
    ds = render().one("DaemonSet", "labkeeper-agent")
    paths = host_paths(ds)
    assert set(paths) == {"/etc", "/home", "/data", "/proc", "/sys/fs/cgroup"}
    assert paths["/data"]["mountPath"] == "/data"  # same path inside, so symlinks it writes resolve on the host
    assert paths["/etc"]["mountPath"] == "/host/etc" and paths["/home"]["mountPath"] == "/host/home"
    assert paths["/proc"]["readOnly"] and paths["/sys/fs/cgroup"]["readOnly"]
    assert not paths["/etc"].get("readOnly") and not paths["/home"].get("readOnly")
    spec = ds["spec"]["template"]["spec"]
    assert not spec.get("hostPID") and not spec.get("hostNetwork")


def test_the_agent_is_root_but_not_privileged(render):
    sc = container(render().one("DaemonSet", "labkeeper-agent"), "agent")["securityContext"]
    assert sc["runAsUser"] == 0
    assert sc["privileged"] is False and sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert set(sc["capabilities"]["add"]) <= {"CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "SYS_CHROOT"}


def test_the_agent_runs_on_gpu_nodes_with_its_node_name_and_data_root(render):
    ds = render({"agent": {"dataRoot": "/mnt/persist/lab"}}).one("DaemonSet", "labkeeper-agent")
    spec = ds["spec"]["template"]["spec"]
    agent = container(ds, "agent")
    assert agent["args"][:4] == ["agent", "--node=$(NODE_NAME)", "--host-root=/host", "--data-root=/mnt/persist/lab"]
    node_name = next(e for e in agent["env"] if e["name"] == "NODE_NAME")
    assert node_name["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    assert "/mnt/persist/lab" in host_paths(ds)
    assert spec["runtimeClassName"] == "nvidia"
    assert {"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"} in agent["env"]
    assert not any(k.startswith("nvidia.com/") for k in (agent["resources"].get("requests") or {}))


def test_a_changed_policy_rolls_the_agents_and_an_operator_tweak_does_not(render):
    def config_hash(values):
        ds = render(values).one("DaemonSet", "labkeeper-agent")
        return ds["spec"]["template"]["metadata"]["annotations"]["checksum/config"]

    base = config_hash(None)
    changed_policy = default_values()
    changed_policy["policy"]["defaults"]["maxWorkspaces"] = 9
    assert config_hash(changed_policy) != base
    assert config_hash({"operator": {"resources": {"requests": {"cpu": "1"}}}}) == base


def test_without_activity_sampling_the_agent_sees_no_host_processes(render):
    ds = render({"agent": {"activitySampling": False}}).one("DaemonSet", "labkeeper-agent")
    assert set(host_paths(ds)) == {"/etc", "/home", "/data"}
    assert not [a for a in container(ds, "agent")["args"] if a.startswith(("--proc-root", "--cgroup-root"))]


def test_the_agent_samples_from_the_host_proc_and_cgroups_where_they_are_mounted(render):
    ds = render().one("DaemonSet", "labkeeper-agent")
    args = container(ds, "agent")["args"]
    mounted = {p: m["mountPath"] for p, m in host_paths(ds).items()}
    # the agent's own /proc and cgroup tree show its own container only: it must read the host's mounts
    assert f"--proc-root={mounted['/proc']}" in args and f"--cgroup-root={mounted['/sys/fs/cgroup']}" in args
    assert "--sampler=nvml" in args


def test_a_file_sampler_gets_its_directory_mounted_read_only_at_the_same_path(render):
    ds = render({"agent": {"sampler": "file:/run/fake-nvml/gpus.json"}}).one("DaemonSet", "labkeeper-agent")
    assert "--sampler=file:/run/fake-nvml/gpus.json" in container(ds, "agent")["args"]
    mount = host_paths(ds)["/run/fake-nvml"]
    assert mount["mountPath"] == "/run/fake-nvml" and mount["readOnly"] is True


def test_without_an_agent_there_is_no_daemonset_and_no_agent_account(render):
    out = render({"agent": {"enabled": False}})
    assert out.all("DaemonSet") == []
    assert not any("agent" in name for kind in ("ServiceAccount", "ClusterRole", "Role")
                   for name in out.names(kind))


def test_without_a_runtime_class_the_agent_asks_for_no_gpu_visibility(render):
    agent = container(render({"agent": {"runtimeClassName": ""}}).one("DaemonSet", "labkeeper-agent"), "agent")
    assert "NVIDIA_VISIBLE_DEVICES" not in {e["name"] for e in agent["env"]}


# ---- RBAC ----------------------------------------------------------------------------------------

def test_the_operator_holds_every_permission_it_grants_users(render):
    """RBAC refuses a Role that grants more than its creator holds; the operator must hold all of it."""
    operator_rules = render().one("ClusterRole", "labkeeper-operator")["rules"]
    granted = [*user_access.user_role("alice")["rules"], *user_access.self_reader_role("alice", "labkeeper:alice:x")[0]["rules"]]
    for rule in granted:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    for name in rule.get("resourceNames") or [None]:
                        assert rules_allow(operator_rules, group, resource, verb, name), (group, resource, verb)


def test_the_operator_reads_secrets_only_in_the_system_namespace(render):
    out = render()
    assert not rules_allow(out.one("ClusterRole", "labkeeper-operator")["rules"], "", "secrets", "get")
    role = out.one("Role", "labkeeper-operator")
    assert role["metadata"]["namespace"] == NAMESPACE
    assert rules_allow(role["rules"], "", "secrets", "create")


def test_the_operator_may_approve_only_api_client_certificates(render):
    rules = render().one("ClusterRole", "labkeeper-operator")["rules"]
    assert rules_allow(rules, "certificates.k8s.io", "signers", "approve", "kubernetes.io/kube-apiserver-client")
    assert not rules_allow(rules, "certificates.k8s.io", "signers", "approve", "kubernetes.io/kubelet-serving")
    assert rules_allow(rules, "certificates.k8s.io", "certificatesigningrequests/approval", "update")


def test_the_agent_reports_but_never_creates_pods_or_writes_specs(render):
    out = render()
    rules = out.one("ClusterRole", "labkeeper-agent")["rules"]
    assert not rules_allow(rules, "", "pods", "create")
    assert not rules_allow(rules, "labkeeper.io", "workspaces", "patch")
    assert rules_allow(rules, "labkeeper.io", "workspaces/status", "patch")
    assert rules_allow(rules, "labkeeper.io", "gpuusers/status", "patch")
    assert not rules_allow(rules, "", "secrets", "get")
    assert not rules_allow(rules, "", "configmaps", "get")
    # kubeconfig-<user> Secrets and the policy are watched in the system namespace only
    role = out.one("Role", "labkeeper-agent")
    assert role["metadata"]["namespace"] == NAMESPACE
    assert rules_allow(role["rules"], "", "secrets", "watch")
    assert rules_allow(role["rules"], "", "configmaps", "watch")
    assert not rules_allow(role["rules"], "", "secrets", "create")


def test_each_binding_names_its_own_service_account(render):
    out = render()
    for kind in ("ClusterRoleBinding", "RoleBinding"):
        for binding in out.all(kind):
            assert binding["roleRef"]["name"] == binding["metadata"]["name"]
            assert binding["subjects"] == [{"kind": "ServiceAccount", "name": binding["metadata"]["name"],
                                            "namespace": NAMESPACE}]
    assert out.names("ServiceAccount") == {"labkeeper-operator", "labkeeper-agent"}


# ---- PriorityClasses, RuntimeClass, metrics, chart test --------------------------------------------

def test_priority_classes_are_the_ones_the_operator_would_apply(render):
    from labkeeper.api.policy import LabPolicy
    from labkeeper.controller.policy import PolicyStore

    values = default_values()
    store = PolicyStore(kube=None, namespace=NAMESPACE)
    store.current = LabPolicy.model_validate(values["policy"])
    want = {pc["metadata"]["name"]: (pc["value"], pc["preemptionPolicy"]) for pc in store.priority_classes()}
    got = {pc["metadata"]["name"]: (pc["value"], pc["preemptionPolicy"]) for pc in render().all("PriorityClass")}
    assert got == want
    assert {"labkeeper-hold", "labkeeper-student", "labkeeper-faculty"} <= set(got)


def test_priority_classes_are_recreated_on_upgrade_because_their_value_is_immutable(render):
    for pc in render().all("PriorityClass"):
        annotations = pc["metadata"]["annotations"]
        assert "pre-upgrade" in annotations["helm.sh/hook"]
        assert annotations["helm.sh/hook-delete-policy"] == "before-hook-creation"
    assert render({"priorityClasses": {"create": False}}).all("PriorityClass") == []


def test_the_nvidia_runtime_class_is_created_only_on_request(render):
    assert render().all("RuntimeClass") == []
    assert render({"runtimeClass": {"create": True}}).one("RuntimeClass", "nvidia")["handler"] == "nvidia"


def test_the_service_monitor_scrapes_the_operator_metrics_port(render):
    assert render().all("ServiceMonitor") == []
    out = render({"metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}}})
    monitor = out.one("ServiceMonitor")
    service = out.one("Service", "labkeeper-operator")
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}
    deploy = out.one("Deployment", "labkeeper-operator")
    assert service["spec"]["selector"] == deploy["spec"]["selector"]["matchLabels"]


def test_helm_test_probes_the_operator_health_through_its_service(render):
    out = render()
    pod = out.one("Pod", "labkeeper-test-health")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    script = pod["spec"]["containers"][0]["args"][0]
    assert f"labkeeper-operator.{NAMESPACE}.svc:8080/healthz" in script
    assert any(p["port"] == 8080 for p in out.one("Service", "labkeeper-operator")["spec"]["ports"])


def test_an_image_digest_wins_over_the_tag(render):
    def image(values):
        return container(render(values).one("Deployment", "labkeeper-operator"), "operator")["image"]

    assert image(None) == "labkeeper/labkeeper:0.1.0"
    digest = "sha256:" + "a" * 64
    assert image({"image": {"registry": "registry.example", "tag": "v9", "digest": digest}}) == f"registry.example/labkeeper/labkeeper@{digest}"
    agent = container(render({"image": {"tag": "v9"}}).one("DaemonSet", "labkeeper-agent"), "agent")
    assert agent["image"] == "labkeeper/labkeeper:v9"
