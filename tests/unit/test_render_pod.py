"""The workspace pod is built by a pure function; these tests compare the built object."""

from labkeeper.render.pod import Mount, PodInputs, workspace_pod

OWNER = {"apiVersion": "labkeeper.io/v1alpha1", "kind": "Workspace", "name": "train", "uid": "u-1",
         "controller": True, "blockOwnerDeletion": True}


def alice(**overrides) -> PodInputs:
    values = dict(
        workspace="train", namespace="lab-alice", owner=OWNER, username="alice", uid=20001, gid=20001,
        supplemental_gids=[2000], home_host_path="/data/users/alice", image="pytorch/pytorch:2.4.0",
        cpu="4", memory="16Gi", gpu_profile="1g.10gb", gpu_count=1, priority_class="labkeeper-student",
        runtime_class="nvidia", grace_seconds=60,
        caches=(Mount("pip", "/data/cache/pip", (("PIP_CACHE_DIR", "/data/cache/pip"),), writable=True),),
        model_stores=(Mount("huggingface", "/data/models/huggingface",
                            (("HF_HUB_CACHE", "/data/models/huggingface/hub"),), writable=False),),
    )
    values.update(overrides)
    return PodInputs(**values)


def test_alices_1g_workspace_pod_snapshot():
    pod = workspace_pod(alice())
    assert pod["metadata"] == {
        "name": "ws-train", "namespace": "lab-alice",
        "labels": {"labkeeper.io/user": "alice", "labkeeper.io/workspace": "train",
                   "labkeeper.io/role": "workspace", "labkeeper.io/gpu": "1g.10gb",
                   "app.kubernetes.io/managed-by": "labkeeper"},
        "ownerReferences": [OWNER],
    }
    assert workspace_pod(alice(gpu_profile="none"))["metadata"]["labels"]["labkeeper.io/gpu"] == "none"
    spec = pod["spec"]
    assert spec["securityContext"] == {"runAsUser": 20001, "runAsGroup": 20001, "supplementalGroups": [2000],
                                       "fsGroupChangePolicy": "OnRootMismatch",
                                       "seccompProfile": {"type": "RuntimeDefault"}}
    assert spec["priorityClassName"] == "labkeeper-student"
    assert spec["runtimeClassName"] == "nvidia"
    assert spec["automountServiceAccountToken"] is False
    assert spec["shareProcessNamespace"] is True  # a stop's SIGTERM reaches her process, not an init that ignores it
    container = spec["containers"][0]
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "privileged": False,
                                            "capabilities": {"drop": ["ALL"]}, "runAsNonRoot": True}
    assert container["resources"]["limits"] == {"cpu": "4", "memory": "16Gi", "nvidia.com/mig-1g.10gb": "1"}
    assert container["resources"]["requests"] == container["resources"]["limits"]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/home/alice"] == {"name": "home", "mountPath": "/home/alice"}
    assert mounts["/data/cache/pip"]["readOnly"] is False
    assert mounts["/data/models/huggingface"]["readOnly"] is True
    assert mounts["/dev/shm"]["name"] == "dshm"
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["home"]["hostPath"] == {"path": "/data/users/alice", "type": "Directory"}
    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
    # the host's user database, read-only: her uid has a name inside any image
    for path in ("/etc/passwd", "/etc/group"):
        assert mounts[path]["readOnly"] is True
        assert volumes[mounts[path]["name"]]["hostPath"] == {"path": path, "type": "File"}
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["PIP_CACHE_DIR"] == "/data/cache/pip"
    assert env["HF_HUB_CACHE"] == "/data/models/huggingface/hub"
    assert "NVIDIA_VISIBLE_DEVICES" not in env


def test_a_pod_without_a_gpu_sees_no_gpu():
    pod = workspace_pod(alice(gpu_profile="none"))
    container = pod["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["NVIDIA_VISIBLE_DEVICES"] == "void"
    assert not any(r.startswith("nvidia.com/") for r in container["resources"]["limits"])


def test_a_full_gpu_is_requested_as_nvidia_gpu():
    limits = workspace_pod(alice(gpu_profile="full", gpu_count=2))["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "2"


def test_an_admitted_pod_is_pinned_to_the_node_admission_chose_by_name():
    pod = workspace_pod(alice(gpu_profile="3g.40gb", node_name="gpu-node-1"))
    terms = pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms == {"nodeSelectorTerms": [{"matchFields": [
        {"key": "metadata.name", "operator": "In", "values": ["gpu-node-1"]}]}]}
    assert "affinity" not in workspace_pod(alice(gpu_profile="3g.40gb"))["spec"]


def test_a_batch_runs_pod_runs_its_command_once_with_a_plain_log():
    run = workspace_pod(alice(batch=True, command=("python", "train.py"), args=("--lr", "3e-4")))
    container = run["spec"]["containers"][0]
    assert run["spec"]["restartPolicy"] == "Never"
    assert (container["command"], container["args"]) == (["python", "train.py"], ["--lr", "3e-4"])
    assert (container["stdin"], container["tty"]) == (False, False)
    interactive = workspace_pod(alice())
    assert interactive["spec"]["restartPolicy"] == "Always"
    assert (interactive["spec"]["containers"][0]["stdin"], interactive["spec"]["containers"][0]["tty"]) == (True, True)
