"""Decide: a parsed spec and the observed facts -> the children that should exist and what to check.

The second of reconcile's three steps, pure. State lives in the cluster,
never only in the operator's memory:

* which engines exist: the build Jobs' results (pod termination messages),
  remembered in ``status.targets`` once read;
* which version is published for the current spec: the publish Job's result,
  remembered in ``status.published``; publishing again is idempotent;
* which version serves: the Triton Deployment's annotations (``children``).

So a restart at any point recomputes the same names and the same decisions,
and a repeated event never duplicates a Job.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from tritonresnet_builder.contract import Result, Tensor

from tritonresnet.api import names
from tritonresnet.api.spec import SpecError, Target, TritonResNetSpec, parse_spec
from tritonresnet.api.status import (
    PublishedStatus,
    SourceFileStatus,
    TargetStatus,
    TensorStatus,
    TritonResNetStatus,
)
from tritonresnet.controller import fleet, observe, render
from tritonresnet.controller.children import (
    Served,
    applied_hash,
    applied_hash_of,
    is_current,
    served_from_deployment,
)
from tritonresnet.controller.observe import EndpointCheck, Expected, Observed, Rollout
from tritonresnet.controller.settings import Settings

Object = dict[str, Any]


@dataclass
class Children:
    """The children a pass decides on: rendered objects to have, and names to delete."""

    desired: list[Object] = field(default_factory=list)
    delete: list[tuple[str, str, str]] = field(default_factory=list)  #: (apiVersion, kind, name)


@dataclass(frozen=True)
class Engines:
    """Where the builds and the publish for the current spec stand."""

    version_key: str
    target_count: int
    targets: tuple[TargetStatus, ...]
    published: Served | None
    build_failure: str = ""
    publish_failure: str = ""
    waiting_for_node: str = ""
    #: A build or publish pod that will not start without a change (its reason and the kubelet's words).
    stuck: str = ""
    repository_bytes: int | None = None  #: the model volume's use once ``published`` was published

    @property
    def failure(self) -> str:
        return self.build_failure or self.publish_failure


@dataclass(frozen=True)
class Verification:
    verified: bool = False
    message: str = ""
    request: tuple[tuple[str, ...], Expected] | None = (
        None  #: endpoints with no known check, and what to expect
    )
    failed: bool = False  #: checks ran and at least one endpoint failed
    #: Every failed endpoint answered outside ``spec.engine.accuracy`` (AccuracyCheckFailed).
    accuracy: bool = False


@dataclass(frozen=True)
class Decision:
    """Everything decided for one valid spec; ``report`` turns it into status and events."""

    spec: TritonResNetSpec
    children: Children
    engines: Engines
    served: Served | None
    rollout: Rollout
    verification: Verification


# -- conflicts ----------------------------------------------------------------------------


def repository_identity(spec: TritonResNetSpec, cr_name: str) -> tuple[str, str]:
    """The volume (and folder in it) a resource publishes into."""
    return render.claim_name(cr_name, spec), spec.repository.sub_path


def model_name_as_written(resource: Mapping[str, Any]) -> str:
    """spec.model.name as written, else metadata.name (its default), without parsing the spec."""
    model = (resource.get("spec") or {}).get("model") or {}
    return str(model.get("name") or resource["metadata"]["name"]) if isinstance(model, Mapping) else ""


def find_conflict(
    resource: Mapping[str, Any], spec: TritonResNetSpec, peers: Sequence[Mapping[str, Any]]
) -> str:
    """Name of an older TritonResNet serving the same model name from the same volume.

    ``peers`` may be the whole namespace; the runtime passes only the resources whose
    model name as written is this one's (its cache is indexed so), since no other can
    conflict: a scan of the namespace on every pass made thousands of resources quadratic.
    """
    me = resource["metadata"]
    mine = (repository_identity(spec, me["name"]), spec.model.name)
    older = []
    for peer in peers:
        pm = peer["metadata"]
        if pm["name"] == me["name"] or model_name_as_written(peer) != spec.model.name:
            continue  # cheap test first: every pass looks at every peer in the namespace
        try:
            pspec = parse_spec(peer)
        except SpecError:
            continue
        if (repository_identity(pspec, pm["name"]), pspec.model.name) != mine:
            continue
        if (pm.get("creationTimestamp") or "", pm["name"]) < (me.get("creationTimestamp") or "", me["name"]):
            older.append(pm["name"])
    return sorted(older)[0] if older else ""


# -- engines: builds, then the publish ----------------------------------------------------


def _tensor_status(served: Served) -> tuple[tuple[TensorStatus, ...], tuple[TensorStatus, ...]]:
    def conv(ts: Sequence[Any]) -> tuple[TensorStatus, ...]:
        return tuple(TensorStatus(t.name, t.datatype, tuple(t.shape)) for t in ts)

    return conv(served.inputs), conv(served.outputs)


def published_status(served: Served, repository_bytes: int | None = None) -> PublishedStatus:
    inputs, outputs = _tensor_status(served)
    return PublishedStatus(served.version_key, served.version, inputs, outputs, repository_bytes)


def _publish_result(observed: Observed, version_key: str) -> Result | None:
    """The result of the publish Job of ``version_key`` when it exists and succeeded."""
    job = observed.jobs.get(names.publish_job_name(observed.resource["metadata"]["name"], version_key))
    if job is None:
        return None
    outcome = observe.job_outcome(job, observed.pods)
    return outcome.result if outcome.state == "Succeeded" else None


def _repository_bytes(old: TritonResNetStatus, version_key: str, result: Result | None) -> int | None:
    """What the publish Job of ``version_key`` reported (``result``), else what status remembers."""
    if result is not None and result.repository_bytes:
        return result.repository_bytes
    if old.published is not None and old.published.version_key == version_key:
        return old.published.repository_bytes
    return None


def _published(
    old: TritonResNetStatus,
    version_key: str,
    served: Served | None,
    release: str,
    batched: bool,
    result: Result | None,
) -> Served | None:
    """The version published for ``version_key``: the one serving, else the one status remembers
    (with the reference answers of its publish Job's ``result`` while it exists: status does not
    keep them, and a pass that saw the Deployment before its new annotation must not render it
    without)."""
    if served is not None and served.version_key == version_key:
        return served
    pub = old.published
    if pub is not None and pub.version_key == version_key:

        def conv(ts: Sequence[TensorStatus]) -> tuple[Tensor, ...]:
            return tuple(Tensor(t.name, t.datatype, t.shape) for t in ts)

        reference = result.reference if result is not None else None
        return Served(
            pub.version,
            version_key,
            conv(pub.inputs),
            conv(pub.outputs),
            release,
            batched,
            reference=reference,
        )
    return None


def _target_entry(
    cr_name: str, target: Target, key: str, state: str, message: str | None = None
) -> TargetStatus:
    return TargetStatus(
        name=target.name,
        engine_key=key,
        job=names.build_job_name(cr_name, key),
        state=state,
        node_selector=dict(target.node_selector),
        message=message,
    )


def _published_targets(
    cr_name: str, old: TritonResNetStatus, targets: Sequence[Target], engine_keys: Mapping[str, str]
) -> tuple[TargetStatus, ...]:
    """The targets of a published version: as recorded when they were built, else rebuilt from the keys.

    Recorded entries of other keys (an abandoned spec's builds) are dropped, so
    status.targets always describes the current spec.
    """
    built = old.built_targets()
    out = []
    for target in targets:
        key = engine_keys[target.name]
        out.append(built.get(key) or _target_entry(cr_name, target, key, "Built", "published"))
    return tuple(out)


def _builds(
    observed: Observed,
    spec: TritonResNetSpec,
    settings: Settings,
    targets: Sequence[Target],
    engine_keys: Mapping[str, str],
    children: Children,
) -> tuple[tuple[TargetStatus, ...], str, str, str]:
    """Per-target build state (failures, waits); renders the missing build Jobs.

    A failed build is remembered in its target's status with the hash of the Job
    that failed: once the Job's TTL removes it, the same Job is not run again. A
    change to anything the Job is rendered from (the spec, including fields
    outside the engine key such as credentialsSecret or tolerations, or the
    ``tritonresnet.io/retry`` annotation) gives another hash: a failed Job of
    the old content is deleted and the build runs again.
    """
    meta = observed.resource["metadata"]
    name = meta["name"]
    old = TritonResNetStatus.from_dict(observed.resource.get("status"))
    built = old.built_targets()
    remembered = {t.engine_key: t for t in old.targets or () if t.state == "Failed" and t.job_hash}
    out: list[TargetStatus] = []
    failures: list[str] = []
    waiting: list[str] = []
    stuck: list[str] = []
    for target in targets:
        key = engine_keys[target.name]
        if key in built:
            out.append(built[key])
            continue
        job_name = names.build_job_name(name, key)
        job = observed.jobs.get(job_name)
        rendered = render.build_job(meta, spec, target, key, settings)
        if job is None:
            failed = remembered.get(key)
            if failed is not None and failed.job_hash == applied_hash(rendered):
                out.append(failed)
                failures.append(f"target {target.name}: {failed.message}")
                continue
            children.desired.append(rendered)
            out.append(_target_entry(name, target, key, "Pending"))
            continue
        outcome = observe.job_outcome(job, observed.pods)
        if outcome.state == "Failed" and not is_current(rendered, job):
            # Fixed since it failed: the Job's template is immutable, so it goes and the next pass
            # (its deletion is an event) creates the new one under the same name.
            children.delete.append(("batch/v1", "Job", job_name))
            out.append(_target_entry(name, target, key, "Pending", "the spec changed since the build failed"))
            continue
        entry = _target_entry(name, target, key, "Built" if outcome.state == "Succeeded" else outcome.state)
        if outcome.state == "Succeeded" and outcome.result is not None:
            r = outcome.result
            entry = replace(
                entry,
                compute_capability=r.compute_capability or None,
                node=outcome.node or None,
                tensorrt_version=r.tensorrt_version or None,
                artifact=r.artifact or None,
                artifact_bytes=r.artifact_bytes,
                source_sha256=r.source_sha256 or None,
                source_files=tuple(SourceFileStatus(f.name, f.sha256, f.size) for f in r.source_files)
                or None,
                message=f"built {r.artifact or r.format}",
            )
        else:
            entry = replace(entry, message=outcome.message or None)
            if outcome.state == "Failed":
                entry = replace(entry, job_hash=applied_hash_of(job))
                failures.append(f"target {target.name}: {outcome.message}")
            elif outcome.state == "Unschedulable":
                waiting.append(f"target {target.name}: waiting for a node: {outcome.message}")
            elif outcome.state == "Stuck":
                stuck.append(f"target {target.name}: build {outcome.message}")
        out.append(entry)
    return tuple(out), "; ".join(failures), "; ".join(waiting), "; ".join(stuck)


def _publish(
    observed: Observed,
    spec: TritonResNetSpec,
    settings: Settings,
    engine_keys: list[str],
    version_key: str,
    served: Served | None,
    children: Children,
) -> tuple[Served | None, str, str, str]:
    """(published version, publish failure, waiting for a node, stuck); renders the publish Job if missing."""
    meta = observed.resource["metadata"]
    job = observed.jobs.get(names.publish_job_name(meta["name"], version_key))
    protect = (served.version,) if served is not None else ()
    if job is None:
        children.desired.append(render.publish_job(meta, spec, engine_keys, version_key, protect, settings))
        return None, "", "", ""
    outcome = observe.job_outcome(job, observed.pods)
    if outcome.state == "Succeeded" and outcome.result is not None:
        r = outcome.result
        release = settings.release_for(spec)
        batched = spec.engine.max_batch_size > 0
        served_now = Served(
            r.version, version_key, r.inputs, r.outputs, release, batched, reference=r.reference
        )
        return served_now, "", "", ""
    if outcome.state == "Failed":
        return None, f"publish: {outcome.message}", "", ""
    if outcome.state == "Unschedulable":
        return None, "", f"publish: waiting for a node: {outcome.message}", ""
    if outcome.state == "Stuck":
        return None, "", "", f"publish {outcome.message}"
    return None, "", "", ""


#: Engines.waiting_for_node with gpuKinds Auto and no GPU kind to build for.
NO_GPU_KIND = (
    "gpuKinds Auto: no node Triton may land on (serving nodeSelector and tolerations) has a GPU "
    "with GPU feature discovery's nvidia.com/gpu.compute.major and minor labels, and engine.targets "
    "lists none; waiting for one"
)


def build_targets(
    observed: Observed, spec: TritonResNetSpec, release: str, old: TritonResNetStatus
) -> tuple[Target, ...]:
    """The spec's targets; with gpuKinds Auto, also one per compute capability of the fleet."""
    if not spec.fleet_mode:
        return spec.build_targets()
    kinds = fleet.gpu_kinds(observed.nodes, spec.serving.node_selector, render.triton_tolerations(spec))
    return fleet.targets(
        spec, kinds, observed.nodes, old.targets or (), lambda t: names.engine_key(spec, t, release)
    )


def _with_capabilities(spec: TritonResNetSpec, published: Served, targets: Sequence[TargetStatus]) -> Served:
    """The published version with the compute capabilities of its plans, which pin Triton (Auto)."""
    found = fleet.plan_capabilities(spec, (t.compute_capability for t in targets if t.compute_capability))
    if not spec.fleet_mode or not all(t.compute_capability for t in targets):
        # A target recorded without its result (status lost): what the Deployment remembers.
        return published
    return replace(published, compute_capabilities=found)


def engines(
    observed: Observed, spec: TritonResNetSpec, settings: Settings, served: Served | None, children: Children
) -> Engines:
    """Build Jobs per target, then the publish Job; an older spec's unfinished Jobs go."""
    name = observed.resource["metadata"]["name"]
    old = TritonResNetStatus.from_dict(observed.resource.get("status"))
    release = settings.release_for(spec)
    targets = build_targets(observed, spec, release, old)
    engine_keys = {t.name: names.engine_key(spec, t, release) for t in targets}
    version_key = names.version_key(spec, sorted(engine_keys.values()))
    if not targets:
        # gpuKinds Auto with no GPU kind seen (yet): nothing to build, and nothing to take away.
        return Engines(version_key, 0, (), None, waiting_for_node=NO_GPU_KIND)

    # An older spec's unfinished builds would only burn GPUs.
    current = {names.build_job_name(name, k) for k in engine_keys.values()}
    current.add(names.publish_job_name(name, version_key))
    for job_name, job in observed.jobs.items():
        if job_name not in current and not observe.finished(job):
            children.delete.append(("batch/v1", "Job", job_name))

    # The version key covers maxBatchSize, so a version published for it is batched as the spec says.
    # Read once: both the published version (its reference answers) and its size come from it.
    publish_result = _publish_result(observed, version_key)
    published = _published(old, version_key, served, release, spec.engine.max_batch_size > 0, publish_result)
    if published is not None:
        built = _published_targets(name, old, targets, engine_keys)
        used = _repository_bytes(old, version_key, publish_result)
        published = _with_capabilities(spec, published, built)
        return Engines(version_key, len(targets), built, published, repository_bytes=used)
    target_status, failure, waiting, stuck = _builds(observed, spec, settings, targets, engine_keys, children)
    publish_failure = ""
    if all(t.state == "Built" for t in target_status) and not failure:
        published, publish_failure, waiting, stuck = _publish(
            observed, spec, settings, sorted(engine_keys.values()), version_key, served, children
        )
        if published is not None:
            published = _with_capabilities(spec, published, target_status)
    used = _repository_bytes(old, version_key, publish_result) if published is not None else None
    return Engines(
        version_key, len(targets), target_status, published, failure, publish_failure, waiting, stuck, used
    )


# -- serving ------------------------------------------------------------------------------


def serving(
    observed: Observed, spec: TritonResNetSpec, settings: Settings, deploy: Served | None, children: Children
) -> Rollout:
    """The Deployment, its Service and PDB once a version exists; the HPA when asked for.

    Nothing to serve, nothing to apply: a new resource's first pass is one Job
    and one status write, which is what keeps apply -> Job short when many
    resources arrive at once.
    """
    meta = observed.resource["metadata"]
    rolled = Rollout()
    if deploy is not None:
        desired = render.triton_deployment(meta, spec, deploy, settings)
        existing = observed.child("Deployment", names.deployment_name(meta["name"]))
        current = is_current(desired, existing)
        # The control Secret and the NetworkPolicy first: the pods the Deployment starts read the one.
        access = render.triton_access(meta, settings, current)
        children.desired += [*access, desired, render.service(meta), render.pod_disruption_budget(meta)]
        rolled = observe.rollout(existing, observed.pods, deploy.version, spec.serving.replicas, current)
    hpa = render.hpa(meta, spec)
    hpa_name = names.hpa_name(meta["name"])
    if hpa is not None:
        children.desired.append(hpa)
    elif observed.child("HorizontalPodAutoscaler", hpa_name) is not None:
        children.delete.append(("autoscaling/v2", "HorizontalPodAutoscaler", hpa_name))
    return rolled


def service_endpoint(observed: Observed, settings: Settings) -> str | None:
    """``host:port`` of the resource's Service as a client reaches it (``Settings.verify_service``);
    None when the Service is not verified; empty while (``cluster-ip``) it has no ClusterIP yet."""
    meta = observed.resource["metadata"]
    name = names.service_name(meta["name"])
    if settings.verify_service == "dns":
        return f"{name}.{meta['namespace']}.svc:{render.HTTP_PORT}"
    if settings.verify_service == "cluster-ip":
        service = observed.child("Service", name)
        cluster_ip = str(((service or {}).get("spec") or {}).get("clusterIP") or "")
        # "None" would be a headless Service's, which ours never is: no address yet all the same.
        return f"{cluster_ip}:{render.HTTP_PORT}" if cluster_ip not in ("", "None") else ""
    return None


def verification(
    observed: Observed,
    spec: TritonResNetSpec,
    deploy: Served | None,
    rolled: Rollout,
    control_headers: tuple[tuple[str, str], ...] = (),
    service: str | None = None,
) -> Verification:
    """Every ready endpoint, and the Service (``service``, when given) once the rollout is
    complete, checked at the deployed version, or a request to check them; while the rollout
    is not complete, Triton asked why its running pods are not ready.

    The Service is checked as a client reaches it, so a broken path to the pods (kube-proxy,
    DNS, a NetworkPolicy) turns the resource not Ready although every pod answers.
    """
    if deploy is None:
        return Verification()
    # What the served version was published with, not the spec: they differ while a spec
    # that switched between maxBatchSize 0 and more builds its version.
    expected = Expected(
        spec.model.name,
        deploy.version,
        deploy.inputs,
        deploy.outputs,
        deploy.batched,
        control_headers,
        reference=deploy.reference,
        tolerance=spec.engine.accuracy,
    )
    if not rolled.complete:
        return _diagnosis(observed, rolled, replace(expected, diagnose=True))
    if not rolled.endpoints:
        if spec.serving.replicas == 0:
            return Verification(True, "scaled to zero")
        return Verification(False, "no ready endpoints yet")
    if service == "":
        return Verification(False, "waiting for the Service's ClusterIP")
    targets = (*rolled.endpoints, service) if service is not None else rolled.endpoints
    also = f" and the Service {service}" if service is not None else ""
    # A diagnosis made while the pod was not ready says nothing of it now: check it afresh.
    checks = [_current(observed.verification.get(e), spec) for e in targets]
    request = (targets, expected) if any(ch is None for ch in checks) else None
    # A failure already known is said at once, whatever is still being checked.
    bad = [ch for ch in checks if ch is not None and not ch.ok]
    if bad:
        message = "; ".join(
            f"{'Service ' if ch.endpoint == service else ''}{ch.endpoint}: {ch.message}" for ch in bad
        )
        # Every failing endpoint answered, only not as onnxruntime does: the model's accuracy,
        # not the rollout, is what a user must look at.
        return Verification(False, message, request, failed=True, accuracy=all(ch.accuracy for ch in bad))
    if request is not None:
        return Verification(False, f"verifying {len(rolled.endpoints)} endpoint(s){also}", request)
    return Verification(
        True, f"{len(rolled.endpoints)} endpoint(s){also} answered at version {deploy.version}"
    )


def _not_diagnostic(check: EndpointCheck | None) -> EndpointCheck | None:
    return None if check is None or check.diagnostic else check


def _current(check: EndpointCheck | None, spec: TritonResNetSpec) -> EndpointCheck | None:
    """``check`` unless it is a diagnosis, or an accuracy failure under another tolerance than the
    spec's (widened to accept a backend's answers: the version stays, its check must not)."""
    check = _not_diagnostic(check)
    if check is not None and check.accuracy and check.tolerance != spec.engine.accuracy:
        return None
    return check


def _diagnosis(observed: Observed, rolled: Rollout, expected: Expected) -> Verification:
    """Triton's own reason when a pod of the version runs but will not become ready.

    Only a version Triton says is UNAVAILABLE (it failed to load, or was unloaded) counts as
    failed: one still LOADING is a rollout under way, whatever a check saw.
    """
    if not rolled.unready:
        return Verification()
    checks = [observed.verification.get(e) for e in rolled.unready]
    request = None
    if any(ch is None or not ch.diagnostic for ch in checks):
        request = (rolled.unready, expected)
    bad = [ch for ch in checks if ch is not None and ch.diagnostic and ch.unavailable]
    if not bad:
        return Verification(request=request)
    message = "; ".join(f"{ch.endpoint}: {ch.message}" for ch in bad)
    return Verification(False, message, request, failed=True)


def decide(observed: Observed, spec: TritonResNetSpec, settings: Settings) -> Decision:
    """All decisions for a valid, unconflicted spec."""
    meta = observed.resource["metadata"]
    children = Children()
    pvc = render.models_pvc(meta, spec)
    if pvc is not None:
        children.desired.append(pvc)
    deployment = observed.child("Deployment", names.deployment_name(meta["name"]))
    served = served_from_deployment(deployment, settings.release_for(spec))
    built = engines(observed, spec, settings, served, children)
    # The published version if there is one, else keep what serves, with the
    # release it was built for (a new release's image waits for its engines).
    deploy = built.published or served
    rolled = serving(observed, spec, settings, deploy, children)
    token = render.control_token(observed.resource, settings)
    control = ((render.CONTROL_HEADER, token),) if token else ()
    checked = verification(observed, spec, deploy, rolled, control, service_endpoint(observed, settings))
    return Decision(spec, children, built, served, rolled, checked)
