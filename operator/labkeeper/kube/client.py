"""Thin helpers over the Kubernetes REST API: server-side apply under one field manager,
status patches that skip no-op writes, events, and a count of every write for the benchmarks."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import threading
from collections import Counter
from typing import Any, cast

import orjson
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from labkeeper.api.conditions import condition as condition  # defined in api: the tree summary there uses it
from labkeeper.api.kinds import KINDS
from labkeeper.api.resources import STATUS_MODELS, check_status

FIELD_MANAGER = "labkeeper"
Body = dict[str, Any]  # an object as the API sends it


def is_not_found(err: Exception) -> bool:
    return isinstance(err, ApiException) and err.status == 404


def is_conflict(err: Exception) -> bool:
    return isinstance(err, ApiException) and err.status == 409


def api_error_message(err: ApiException) -> str:
    try:
        return str(json.loads(err.body or "").get("message", str(err)))
    except (TypeError, ValueError):
        return str(err)


def list_union(kube: Any, kind: str, field_selectors: tuple[str, ...], namespace: str | None = None, *,
               cached: bool = False) -> list[Body]:
    """Every object one of `field_selectors` selects (field selectors only AND), each once, by namespace and name.
    One list each: an object that moved between them meanwhile is in both (the first read kept) or in neither, as
    in a list taken a moment earlier or later."""
    seen: dict[tuple[str, str], Body] = {}
    try:
        for selector in field_selectors:
            for obj in kube.list(kind, namespace, field_selector=selector, cached=cached):
                seen.setdefault((obj["metadata"].get("namespace") or "", obj["metadata"]["name"]), obj)
    except ApiException as err:
        if err.status != 400:
            raise
        # a CRD installed before these fields were selectable (labctl newer than the lab): all of them, which
        # holds the union
        return kube.list(kind, namespace, cached=cached)  # type: ignore[no-any-return]
    return [seen[key] for key in sorted(seen)]


class Kube:
    """One client for the whole process; counts writes, and reads, by verb and kind."""

    def __init__(self, api_client: k8s.ApiClient | None = None, field_manager: str = FIELD_MANAGER) -> None:
        self.api = api_client or k8s.ApiClient()
        self.field_manager = field_manager
        self.writes: Counter[str] = Counter()
        self.reads: Counter[str] = Counter()
        self._lock = threading.Lock()

    @classmethod
    def from_kubeconfig(cls, kubeconfig: str | None = None, *, connections: int | None = None, **kwargs: Any) -> Kube:
        """`connections`: requests in flight at once that each keep their connection (the client's default is five
        for each CPU; a request beyond the pool opens a connection of its own and drops it after one use)."""
        if kubeconfig:
            configuration = k8s.Configuration()
            k8s_config.load_kube_config(config_file=kubeconfig,  # type: ignore[no-untyped-call]
                                        client_configuration=configuration)
        else:
            try:
                k8s_config.load_incluster_config()  # type: ignore[no-untyped-call]
            except k8s_config.ConfigException:
                k8s_config.load_kube_config()  # type: ignore[no-untyped-call]
            configuration = k8s.Configuration.get_default_copy()
        if connections is not None:
            configuration.connection_pool_maxsize = connections
        return cls(k8s.ApiClient(configuration), **kwargs)

    def _count(self, verb: str, kind: str, counter: Counter[str] | None = None) -> None:
        with self._lock:
            (self.writes if counter is None else counter)[f"{verb} {kind}"] += 1

    def _call(self, method: str, path: str, body: Any = None, *, query: list[tuple[str, str]] | None = None,
              content_type: str = "application/json") -> Body:
        # kubernetes-client >= 35: serialize (auth, host, query), then send
        method, url, headers, payload, post = self.api.param_serialize(
            method, path, query_params=query or [], body=body, auth_settings=["BearerToken"],
            header_params={"Content-Type": content_type, "Accept": "application/json"},
        )
        response = self.api.call_api(method, url, header_params=headers, body=payload, post_params=post,
                                     _request_timeout=30)
        response.read()  # type: ignore[no-untyped-call]
        if not 200 <= response.status <= 299:
            raise ApiException(http_resp=response)
        return cast(Body, orjson.loads(response.data)) if response.data else {}

    # ---- reads -------------------------------------------------------------------------------
    def get(self, kind: str, name: str, namespace: str | None = None) -> Body | None:
        self._count("get", kind, self.reads)
        try:
            return self._call("GET", KINDS[kind].path(name, namespace))
        except ApiException as err:
            if is_not_found(err):
                return None
            raise

    def list(self, kind: str, namespace: str | None = None, label_selector: str | None = None,
             field_selector: str | None = None, *, cached: bool = False) -> list[Body]:
        """`cached`: from the API server's watch cache as it stands (resourceVersion 0): it may be a moment behind,
        and the server neither reads etcd nor waits for its cache to catch up. For views a person reads, never for
        a decision."""
        self._count("list", kind, self.reads)
        query = [("resourceVersion", "0")] if cached else []
        if label_selector:
            query.append(("labelSelector", label_selector))
        if field_selector:
            query.append(("fieldSelector", field_selector))
        return cast(list[Body], self._call("GET", KINDS[kind].path(namespace=namespace), query=query)["items"])

    def count(self, kind: str, namespace: str | None = None) -> int:
        """How many there are, from a list of one: the API server reports how many more it left out."""
        self._count("list", kind, self.reads)
        page = self._call("GET", KINDS[kind].path(namespace=namespace), query=[("limit", "1")])
        more = (page.get("metadata") or {}).get("remainingItemCount")
        if more is None and (page.get("metadata") or {}).get("continue"):
            return len(self.list(kind, namespace))  # a server that does not count: the whole list
        return len(page["items"]) + int(more or 0)

    # ---- writes ------------------------------------------------------------------------------
    def apply(self, obj: Body, *, force: bool = True) -> Body:
        """Server-side apply under labkeeper's field manager; the API skips no-op applies."""
        kind = KINDS[obj["kind"]]
        meta = obj["metadata"]
        self._count("apply", obj["kind"])
        return self._call(
            "PATCH", kind.path(meta["name"], meta.get("namespace")), obj,
            query=[("fieldManager", self.field_manager), ("force", "true" if force else "false")],
            content_type="application/apply-patch+yaml",
        )

    def create(self, obj: Body) -> Body:
        kind = KINDS[obj["kind"]]
        self._count("create", obj["kind"])
        return self._call("POST", kind.path(namespace=obj["metadata"].get("namespace")), obj)

    def replace(self, obj: Body) -> Body:
        kind = KINDS[obj["kind"]]
        meta = obj["metadata"]
        self._count("replace", obj["kind"])
        return self._call("PUT", kind.path(meta["name"], meta.get("namespace")), obj)

    def replace_subresource(self, kind: str, obj: Body, subresource: str) -> Body:
        meta = obj["metadata"]
        self._count("replace", f"{kind}/{subresource}")
        return self._call("PUT", KINDS[kind].path(meta["name"], meta.get("namespace"), subresource), obj)

    def whoami(self) -> str:
        review = self._call("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews",
                            {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
        return str(review["status"]["userInfo"]["username"])

    def patch(self, kind: str, name: str, patch: Body, namespace: str | None = None,
              subresource: str | None = None) -> Body:
        self._count("patch", kind if not subresource else f"{kind}/{subresource}")
        return self._call("PATCH", KINDS[kind].path(name, namespace, subresource), patch,
                          content_type="application/merge-patch+json")

    def delete(self, kind: str, name: str, namespace: str | None = None, *,
               grace_seconds: int | None = None, propagation: str = "Background") -> bool:
        body: Body = {"propagationPolicy": propagation}
        if grace_seconds is not None:
            body["gracePeriodSeconds"] = grace_seconds
        self._count("delete", kind)
        try:
            self._call("DELETE", KINDS[kind].path(name, namespace), body)
            return True
        except ApiException as err:
            if is_not_found(err):
                return False
            raise

    def patch_status(self, kind: str, obj: Body, desired: Body, *, if_unchanged: bool = False) -> Body | None:
        """Merge `desired` into the object's status; writes nothing (None) when every field already matches, else
        returns the object as written. A lab kind's status patch is held to its api model first
        (api.resources.check_status): a field the model lacks, or a value it refuses, fails the pass instead of
        reaching the API server. `if_unchanged`: only onto `obj` as it was read (its resourceVersion); a write since
        refuses it with 409."""
        current = obj.get("status") or {}
        changed = {key: value for key, value in desired.items() if stored(current.get(key)) != stored(value)}
        if not changed:
            return None
        if kind in STATUS_MODELS:
            check_status(kind, {key: value for key, value in changed.items() if value is not None})
        meta = obj["metadata"]
        patch: Body = {"status": changed}
        if if_unchanged:
            patch["metadata"] = {"resourceVersion": meta["resourceVersion"]}
        return self.patch(kind, meta["name"], patch, meta.get("namespace"), subresource="status")

    def event(self, obj: Body, reason: str, message: str, *, type_: str = "Normal",
              component: str = "labkeeper-operator") -> None:
        meta = obj["metadata"]
        namespace = meta.get("namespace") or "default"
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": namespace},
            "involvedObject": {
                "apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"), "name": meta["name"],
                "namespace": meta.get("namespace"), "uid": meta.get("uid"),
            },
            "reason": reason,
            "message": message[:1024],
            "type": type_,
            "source": {"component": component},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "reportingComponent": component,
        }
        # an event is best effort; losing one must never fail a reconcile
        with contextlib.suppress(ApiException):
            self.create(event)


def stored(value: Any) -> Any:
    """A value as the API server keeps it after a merge patch: a null in an object is no field at all (a
    desired `{"estimatedStart": None}` matches a status without it)."""
    if isinstance(value, dict):
        return {key: stored(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [stored(item) for item in value]
    return value


def owner_reference(obj: Body, *, controller: bool = True, block: bool = True) -> Body:
    return {
        "apiVersion": obj["apiVersion"],
        "kind": obj["kind"],
        "name": obj["metadata"]["name"],
        "uid": obj["metadata"]["uid"],
        "controller": controller,
        "blockOwnerDeletion": block,
    }


