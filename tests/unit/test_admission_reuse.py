"""Admission hands the view of the lab it read to the passes after it while nothing that frees a device happened:
fewer lists of the whole lab, the same answers. A table of API objects stands in for the lists (counted)."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace

import yaml

from labkeeper.api.policy import load_policy
from labkeeper.controller.admission import REUSE_FOR, Admissions
from labkeeper.testing.cluster import REPO_ROOT

T0 = dt.datetime(2026, 3, 1, 11, 0, tzinfo=dt.UTC)
POLICY = load_policy(yaml.safe_load((REPO_ROOT / "examples" / "policy.yaml").read_text())["data"]["policy.yaml"])


def node() -> dict:
    return {"metadata": {"name": "h100"}, "spec": {},
            "status": {"allocatable": {"nvidia.com/mig-1g.10gb": "1", "nvidia.com/mig-3g.40gb": "1"},
                       "conditions": [{"type": "Ready", "status": "True"}]}}


def pod(user: str) -> dict:
    return {"metadata": {"name": "ws-ws", "namespace": f"lab-{user}",
                         "labels": {"app.kubernetes.io/managed-by": "labkeeper", "labkeeper.io/workspace": "ws",
                                    "labkeeper.io/role": "workspace"}},
            "spec": {"nodeName": "h100", "containers": [{"resources": {"limits": {"nvidia.com/mig-1g.10gb": "1"}}}]},
            "status": {"phase": "Running"}}


def waiting(user: str, minutes: int, profile: str = "1g.10gb") -> dict:
    since = (T0 + dt.timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return {"metadata": {"name": "ws", "namespace": f"lab-{user}"},
            "spec": {"state": "Running", "gpu": {"profile": profile, "count": 1}},
            "status": {"phase": "Pending", "reason": "WaitingForDevice", "waitingSince": since}}


class Lists:
    def __init__(self, **items: list[dict]) -> None:
        self.items = items
        self.calls = 0

    def list(self, kind: str, *args, **kwargs) -> list[dict]:
        self.calls += 1
        return self.items.get(kind, [])


def lab() -> tuple[Admissions, Lists]:
    users = [{"metadata": {"name": n}, "spec": {"tier": "student", "state": "Active"}} for n in ("ann", "bob", "cy")]
    kube = Lists(Node=[node()], Pod=[pod("ann")], GPUUser=users,
                 Workspace=[waiting("bob", 1), waiting("cy", 2), waiting("cy", 3, profile="3g.40gb") | {
                     "metadata": {"name": "big", "namespace": "lab-cy"}}])
    return Admissions(kube, SimpleNamespace(current=POLICY)), kube  # type: ignore[arg-type]


def since(ws: dict) -> dt.datetime:
    return dt.datetime.fromisoformat(ws["status"]["waitingSince"].replace("Z", "+00:00"))


def test_a_waiter_of_the_kept_view_gets_it_again_with_the_same_decision_and_no_moves():
    admissions, kube = lab()
    bob, cy, _big = kube.items["Workspace"]
    first = admissions.view(T0, me=bob, my_since=since(bob))
    read = kube.calls
    assert read == 5 and admissions.views_read == 1  # nodes, pods, users, the two halves of the live workspaces
    assert first.decide().waiting["lab-bob/ws"].ahead == 0 and first.decide().waiting["lab-cy/ws"].ahead == 1
    again = admissions.view(T0 + dt.timedelta(seconds=3), me=cy, my_since=since(cy))
    assert kube.calls == read and admissions.views_reused == 1  # nothing listed
    assert again.decide() is first.decide()
    assert again.moved(again.decide()) == []  # the first pass told those who moved
    # cy's big run was admitted to the free 3g.40gb slice: the first pass woke it, a pass handed the view again does not
    assert first.decide().admitted == {"lab-cy/big": "h100"} and "lab-cy/big" not in first.pods_of
    assert "lab-cy/big" in again.pods_of


def test_a_change_a_newcomer_other_devices_or_time_make_the_next_pass_read_the_lab_again():
    admissions, kube = lab()
    bob, cy, _big = kube.items["Workspace"]
    admissions.view(T0, me=bob, my_since=since(bob))
    admissions.changed()  # a pod was deleted, a waiter left, a node changed...
    admissions.view(T0, me=cy, my_since=since(cy))
    assert admissions.views_read == 2
    admissions.view(T0 + REUSE_FOR, me=cy, my_since=since(cy))
    assert admissions.views_read == 3
    dee = waiting("dee", 5)  # not a waiter in the kept view
    admissions.view(T0 + REUSE_FOR, me=dee, my_since=since(dee))
    assert admissions.views_read == 4
    other = waiting("cy", 2, profile="3g.40gb")  # cy now asks for another kind of device
    admissions.view(T0 + REUSE_FOR, me=other, my_since=since(other))
    assert admissions.views_read == 5
    assert admissions.views_reused == 0
    assert admissions.read_why == {"none kept": 1, "changed": 1, "expired": 1, "asker": 2}


def member(name: str, tier: str = "student") -> dict:
    return {"metadata": {"name": name}, "spec": {"tier": tier, "state": "Active"}}


def newcomer(user: str, name: str, minutes: int, profile: str = "1g.10gb") -> dict:
    return waiting(user, minutes, profile) | {"metadata": {"name": name, "namespace": f"lab-{user}"}}


def test_a_newcomer_extends_the_kept_view_and_those_it_admitted_stay_admitted_without_a_read():
    admissions, kube = lab()
    bob, _cy, big = kube.items["Workspace"]
    admissions.view(T0, me=bob, my_since=since(bob))
    read = kube.calls
    more = newcomer("ann", "more", 5)
    ext = admissions.view(T0 + dt.timedelta(seconds=1), me=more, my_since=since(more), my_user=member("ann"))
    assert kube.calls == read and (admissions.views_read, admissions.views_extended) == (1, 1)
    decision = ext.decide()
    # cy's big run keeps the 3g.40gb slice it was given, now counted as taken; ann queues behind bob and cy
    assert decision.admitted == {"lab-cy/big": "h100"} and "lab-cy/big" in ext.pods_of
    assert decision.waiting["lab-ann/more"].ahead == 2 and ext.moved(decision) == []
    # big's own pass finds its admission in the view as extended, with nothing read
    again = admissions.view(T0 + dt.timedelta(seconds=2), me=big, my_since=since(big))
    assert again.decide().admitted["lab-cy/big"] == "h100" and kube.calls == read
    # and so does the next newcomer's, behind ann
    last = newcomer("bob", "last", 6)
    after = admissions.view(T0 + dt.timedelta(seconds=3), me=last, my_since=since(last), my_user=member("bob"))
    assert after.decide().waiting["lab-bob/last"].ahead == 3 and kube.calls == read


def test_a_newcomer_ahead_in_the_queue_cannot_take_what_the_kept_decision_gave_and_those_behind_it_move():
    admissions, kube = lab()
    bob, _cy, _big = kube.items["Workspace"]
    admissions.view(T0, me=bob, my_since=since(bob))
    # a researcher (a higher tier, no preemption) asks for the 3g.40gb slice big was just given
    eve = newcomer("ann", "eve", 6, profile="3g.40gb")
    ext = admissions.view(T0 + dt.timedelta(seconds=1), me=eve, my_since=since(eve), my_user=member("ann", "researcher"))
    decision = ext.decide()
    assert decision.admitted == {"lab-cy/big": "h100"} and decision.waiting["lab-ann/eve"].ahead == 0
    # another asks for a 1g.10gb slice: she goes ahead of bob and cy, who each get a pass to say so
    ivy = newcomer("ann", "ivy", 7)
    ext = admissions.view(T0 + dt.timedelta(seconds=2), me=ivy, my_since=since(ivy), my_user=member("ann", "researcher"))
    decision = ext.decide()
    assert decision.waiting["lab-ann/ivy"].ahead == 0
    assert sorted(ext.moved(decision)) == ["lab-bob/ws", "lab-cy/ws"]
    assert admissions.views_read == 1 and admissions.views_extended == 2


def test_a_newcomer_who_may_preempt_or_whose_user_the_read_did_not_see_reads_the_lab():
    admissions, kube = lab()
    bob, _cy, _big = kube.items["Workspace"]
    admissions.view(T0, me=bob, my_since=since(bob))
    boss = newcomer("ann", "boss", 6)
    admissions.view(T0 + dt.timedelta(seconds=1), me=boss, my_since=since(boss), my_user=member("ann", "faculty"))
    assert admissions.views_read == 2
    dee = newcomer("dee", "ws", 7)
    admissions.view(T0 + dt.timedelta(seconds=1), me=dee, my_since=since(dee), my_user=member("dee"))
    assert (admissions.views_read, admissions.views_extended) == (3, 0)


def test_a_newcomer_counts_its_own_hold_as_its_status_says_now_not_as_the_read_found_it():
    held = {"metadata": {"name": "slice", "namespace": "lab-cy"}, "spec": {"state": "Stopped"},
            "status": {"phase": "Stopped", "holdNode": "h100", "holdResource": "nvidia.com/mig-1g.10gb",
                       "holdCount": 1, "holdUntil": "2026-03-01T11:15:00Z"}}
    bob = waiting("bob", 1)
    kube = Lists(Node=[node()], Pod=[], GPUUser=[member("bob"), member("cy")], Workspace=[bob, held])
    admissions = Admissions(kube, SimpleNamespace(current=POLICY))  # type: ignore[arg-type]
    first = admissions.view(T0, me=bob, my_since=since(bob))
    assert first.decide().waiting["lab-bob/ws"].held_until  # the only 1g.10gb slice is cy's, held
    # cy's hold was lost meanwhile (its record cleared), and she asks again: no hold of hers counts any more
    back = {**held, "spec": {"state": "Running", "gpu": {"profile": "1g.10gb", "count": 1}},
            "status": {"phase": "Pending", "waitingSince": "2026-03-01T11:02:00.000000Z"}}
    ext = admissions.view(T0 + dt.timedelta(seconds=2), me=back, my_since=since(back), my_user=member("cy"))
    decision = ext.decide()
    assert admissions.views_extended == 1 and decision.lost_holds == []
    assert decision.admitted == {"lab-bob/ws": "h100"} and decision.waiting["lab-cy/slice"].ahead == 0


def test_a_read_of_the_lab_takes_users_from_the_watch_and_lists_them_only_for_a_waiter_the_watch_has_not_shown():
    class Counting(Lists):
        def __init__(self, **items: list[dict]) -> None:
            super().__init__(**items)
            self.kinds: list[tuple[str, str | None]] = []

        def list(self, kind: str, *args, **kwargs) -> list[dict]:
            self.kinds.append((kind, kwargs.get("label_selector")))
            return super().list(kind, *args, **kwargs)

    bob, cy = waiting("bob", 1), waiting("cy", 2)
    users = {"bob": member("bob"), "cy": member("cy", "faculty")}
    kube = Counting(Node=[node()], Pod=[], GPUUser=list(users.values()), Workspace=[bob, cy])
    watched: dict[str, dict] = dict(users)
    admissions = Admissions(kube, SimpleNamespace(current=POLICY), watched)  # type: ignore[arg-type]
    view = admissions.view(T0, fresh=True)
    assert "GPUUser" not in [kind for kind, _ in kube.kinds]
    assert {w.owner: w.priority for w in view.waiters} == {"lab-bob/ws": 10000, "lab-cy/ws": 30000}
    # only a pod labelled as a CPU workspace's is left out of the read: it holds no device
    assert ("Pod", "labkeeper.io/gpu!=none") in kube.kinds
    del watched["cy"]  # the watch has not shown her yet: her tier is read, not taken as unknown
    kube.kinds.clear()
    view = admissions.view(T0, fresh=True)
    assert [kind for kind, _ in kube.kinds].count("GPUUser") == 1
    assert {w.owner: w.priority for w in view.waiters}["lab-cy/ws"] == 30000


def test_a_read_of_the_lab_holds_no_pass_back_and_counts_the_pod_a_kept_view_admitted_while_it_ran():
    import contextlib
    import threading

    class Slow(Lists):
        """Lists as the API answers them; while `gate` is set up, a pod list is answered as it was when asked,
        after the gate opens (a read of the lab that takes seconds at a department's size)."""

        def __init__(self, **items: list[dict]) -> None:
            super().__init__(**items)
            self.asked = threading.Event()
            self.gate: threading.Event | None = None

        def list(self, kind: str, *args, **kwargs) -> list[dict]:
            answer = list(super().list(kind, *args, **kwargs))
            if kind == "Pod" and self.gate is not None:
                self.asked.set()
                self.gate.wait(10)
            return answer

    users = [member(n) for n in ("ann", "bob", "cy")]
    bob, cy, big = waiting("bob", 1), waiting("cy", 2), newcomer("cy", "big", 3, profile="3g.40gb")
    kube = Slow(Node=[node()], Pod=[pod("ann")], GPUUser=users, Workspace=[bob, cy, big])
    admissions = Admissions(kube, SimpleNamespace(current=POLICY))  # type: ignore[arg-type]
    first = admissions.view(T0, me=bob, my_since=since(bob))
    assert first.decide().admitted == {"lab-cy/big": "h100"}  # the one 3g.40gb slice
    # bob asks for the 3g.40gb slice now: another kind than the kept view has him waiting for, so a read
    other = waiting("bob", 1, profile="3g.40gb")
    kube.gate = threading.Event()
    seen: dict[str, object] = {}
    reader = threading.Thread(target=lambda: seen.update(view=admissions.view(
        T0 + dt.timedelta(seconds=1), me=other, my_since=since(other))))
    reader.start()
    assert kube.asked.wait(10)
    # while it reads, big's pass is handed the kept view, finds itself admitted and creates its pod
    served: dict[str, object] = {}

    def big_pass() -> None:
        with contextlib.ExitStack() as held:
            served["view"] = admissions.view(T0 + dt.timedelta(seconds=2), me=big, my_since=since(big), held=held)
            created = pod("cy") | {"metadata": {**pod("cy")["metadata"], "labels": {
                **pod("cy")["metadata"]["labels"], "labkeeper.io/workspace": "big"}}}
            created["spec"] = {"nodeName": "h100", "containers": [{"resources": {"limits": {
                "nvidia.com/mig-3g.40gb": "1"}}}]}
            admissions.created(created)

    passing = threading.Thread(target=big_pass)
    passing.start()
    passing.join(5)
    assert not passing.is_alive(), "a pass the kept view serves waited for a read of the lab"
    assert served["view"].decide().admitted["lab-cy/big"] == "h100"  # type: ignore[attr-defined]
    kube.gate.set()
    reader.join(10)
    view = seen["view"]
    decision = view.decide()  # type: ignore[attr-defined]
    # the read's pod list was taken before big's pod existed; the pod is counted all the same
    assert "lab-cy/big" in view.pods_of and "lab-cy/big" not in decision.admitted  # type: ignore[attr-defined]
    assert decision.waiting["lab-bob/ws"].resource == "nvidia.com/mig-3g.40gb"
    assert decision.waiting["lab-bob/ws"].in_use == 1
    assert admissions.read_why["asker"] == 1 and admissions.views_read == 2


def test_a_pod_created_during_a_read_is_counted_once_whether_or_not_the_lists_caught_it():
    from labkeeper.api.admission import Claim, Waiter
    from labkeeper.controller.admission import LabView

    mig = "nvidia.com/mig-1g.10gb"
    listed = Claim("lab-a/ws", "n1", mig, 1, priority=10, terminating=True)  # an old hold pod of hers, going
    view = LabView({("n1", mig): 1, ("n2", mig): 1}, frozenset(), [listed],
                   [Waiter("lab-a/ws", mig, 1, 10, T0), Waiter("lab-b/ws", mig, 1, 10, T0)], frozenset())
    caught = view.with_created([listed])  # the list had it already
    assert caught is view
    new = Claim("lab-a/ws", "n2", mig, 1, priority=10)  # her new pod, on the other node, not listed
    counted = view.with_created([new])
    assert counted.claims == [listed, new] and "lab-a/ws" in counted.pods_of
    assert [w.owner for w in counted.waiters] == ["lab-b/ws"]
    assert counted.decide().admitted == {}  # both slices taken: b waits
