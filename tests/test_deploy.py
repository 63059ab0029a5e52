"""deploy/: every manifest validated offline, the project's security rules, the local scripts' syntax.

- Built-in kinds: Kubernetes' own JSON schemas (`kubernetes-validate`, strict: unknown fields fail).
- ray.io kinds: KubeRay's CRD schema (tests/fixtures/kuberay-crds/, pinned commit, strict like
  `kubectl apply --validate=strict`); their pod templates: Kubernetes' PodTemplate schema.
- The cluster-launcher YAML: `ray/autoscaler/ray-schema.json` from the installed ray.
- Each kind also has deliberately broken copies that must fail, so a validator that accepts everything
  cannot pass.
- deploy/local/start.sh, env.sh, stop.sh are run for real in test_cluster.py (one start for its Ray jobs too).
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
CRD_FIXTURE = Path(__file__).parent / "fixtures" / "kuberay-crds" / "kuberay-v1.yaml"
K8S_VERSION = "1.34.0"  # the Kubernetes API that KubeRay 1.6 builds against (k8s.io/api v0.34)
RAY_KINDS = ("RayCluster", "RayJob", "RayCronJob")
RAY_PORTS = {8265, 10001}  # dashboard/Jobs API and Ray Client: code execution for whoever reaches them
MANIFEST_FILES = sorted([*DEPLOY.glob("kuberay/*.yaml"), *DEPLOY.glob("mlflow/*.yaml")])
LAUNCHER_FILES = sorted(DEPLOY.glob("launcher/*.yaml"))


def load_docs(path: Path) -> list[dict]:
    with open(path) as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


OBJECTS = [(path, doc) for path in MANIFEST_FILES for doc in load_docs(path)]


def object_id(path: Path, obj: dict) -> str:
    return f"{path.relative_to(DEPLOY)}:{obj['kind']}/{obj['metadata']['name']}"


def find(kind: str, name: str | None = None) -> dict:
    matches = [obj for _, obj in OBJECTS if obj["kind"] == kind and name in (None, obj["metadata"]["name"])]
    assert len(matches) >= 1, f"no {kind} {name or ''} under deploy/"
    return copy.deepcopy(matches[0])


# --- validators --------------------------------------------------------------------------------------------


def _strict(schema: Any) -> Any:
    """An OpenAPI CRD schema as the API server treats it with field validation Strict: an object that lists
    its properties (and does not preserve unknown fields) rejects others; int32 has its range."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _strict(value) for key, value in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    if out.get("format") == "int32" and out.get("type") == "integer":
        out.setdefault("minimum", -(2**31))
        out.setdefault("maximum", 2**31 - 1)
    return out


with open(CRD_FIXTURE) as _f:
    _CRDS = yaml.safe_load(_f)
RAY_SCHEMAS = {kind: _strict(schema) for kind, schema in _CRDS["kinds"].items()}


def pod_templates(kind: str, spec: dict) -> list[tuple[str, dict]]:
    """The core/v1 PodTemplateSpecs inside a ray.io object (elided from the CRD fixture)."""
    found: list[tuple[str, dict]] = []
    if kind == "RayCluster":
        if isinstance(spec.get("headGroupSpec"), dict) and "template" in spec["headGroupSpec"]:
            found.append(("headGroupSpec.template", spec["headGroupSpec"]["template"]))
        for i, group in enumerate(spec.get("workerGroupSpecs") or []):
            if isinstance(group, dict) and "template" in group:
                found.append((f"workerGroupSpecs[{i}].template", group["template"]))
    elif kind == "RayJob":
        if isinstance(spec.get("rayClusterSpec"), dict):
            found += [(f"rayClusterSpec.{p}", t) for p, t in pod_templates("RayCluster", spec["rayClusterSpec"])]
        if "submitterPodTemplate" in spec:
            found.append(("submitterPodTemplate", spec["submitterPodTemplate"]))
    elif kind == "RayCronJob" and isinstance(spec.get("jobTemplate"), dict):
        found += [(f"jobTemplate.{p}", t) for p, t in pod_templates("RayJob", spec["jobTemplate"])]
    return found


def validate_builtin(obj: dict) -> None:
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def validate_ray(obj: dict) -> None:
    assert obj.get("apiVersion") == "ray.io/v1", f"{obj.get('kind')}: apiVersion must be ray.io/v1"
    jsonschema.Draft7Validator(RAY_SCHEMAS[obj["kind"]]).validate(obj)
    for where, template in pod_templates(obj["kind"], obj.get("spec") or {}):
        try:
            validate_builtin(
                {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": template}
            )
        except jsonschema.ValidationError as exc:
            raise jsonschema.ValidationError(f"{where}: {exc.message}") from exc


def validate(obj: dict) -> None:
    """Raise jsonschema.ValidationError if the object does not fit its kind's schema."""
    if obj["kind"] in RAY_KINDS:
        validate_ray(obj)
    else:
        validate_builtin(obj)


# --- the project's own rules -------------------------------------------------------------------------------

_SECRETISH_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|CREDENTIAL|ACCESS_KEY|PRIVATE_KEY", re.I)
_URL_WITH_PASSWORD = re.compile(r"://[^/\s:@]+:[^/\s@]+@")


def _containers(obj: dict) -> list[dict]:
    """Every container (and init container) spec in the object, wherever it sits."""
    found: list[dict] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key in ("containers", "initContainers"):
                if isinstance(node.get(key), list):
                    found.extend(c for c in node[key] if isinstance(c, dict))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(obj.get("spec"))
    return found


def project_rule_errors(obj: dict) -> list[str]:
    errors: list[str] = []
    kind, spec = obj["kind"], obj.get("spec") or {}
    if kind == "CronJob" and spec.get("concurrencyPolicy") != "Forbid":
        errors.append("CronJob: concurrencyPolicy must be Forbid (one sweep of a study at a time)")
    if kind == "Service" and spec.get("type") in ("LoadBalancer", "NodePort"):
        exposed = {p.get("port") for p in spec.get("ports", [])} | {p.get("targetPort") for p in spec.get("ports", [])}
        if exposed & RAY_PORTS or "ray.io/cluster" in (spec.get("selector") or {}):
            errors.append(f"Service {spec['type']} exposes the Ray dashboard/client ports")
    if kind == "Ingress":
        if not spec.get("tls"):
            errors.append("Ingress without TLS")
        for rule in spec.get("rules", []):
            for path in rule.get("http", {}).get("paths", []):
                port = path.get("backend", {}).get("service", {}).get("port", {})
                if port.get("number") in RAY_PORTS or "ray" in path.get("backend", {}).get("service", {}).get(
                    "name", ""
                ):
                    errors.append("Ingress routes to the Ray dashboard/client")
    cluster_specs = {
        "RayCluster": [spec],
        "RayJob": [spec.get("rayClusterSpec")],
        "RayCronJob": [(spec.get("jobTemplate") or {}).get("rayClusterSpec")],
    }.get(kind, [])
    for cluster in filter(None, cluster_specs):
        head = cluster.get("headGroupSpec", {})
        if head.get("rayStartParams", {}).get("num-cpus") != "0":
            errors.append('RayCluster head: rayStartParams num-cpus must be "0"')
        if head.get("serviceType", "ClusterIP") != "ClusterIP":
            errors.append("RayCluster head service must be ClusterIP")
        if (cluster.get("authOptions") or {}).get("mode") != "token":
            errors.append("RayCluster: authOptions.mode must be token")
    for container in _containers(obj):
        for env in container.get("env", []):
            value = env.get("value")
            if value is None:
                continue
            if _SECRETISH_NAME.search(env["name"]) and env["name"] not in ("RAY_AUTH_MODE",):
                errors.append(f"env {env['name']} holds a literal value: use valueFrom.secretKeyRef")
            if _URL_WITH_PASSWORD.search(str(value)):
                errors.append(f"env {env['name']} holds a URL with a password: use valueFrom.secretKeyRef")
        for arg in [*container.get("args", []), *container.get("command", [])]:
            if _URL_WITH_PASSWORD.search(str(arg)):
                errors.append(f"container {container.get('name')}: a password in its command line")
    return errors


# --- every manifest is valid and follows the rules ---------------------------------------------------------


def test_manifests_found():
    kinds = {obj["kind"] for _, obj in OBJECTS}
    assert {
        "RayCluster",
        "RayJob",
        "RayCronJob",
        "CronJob",
        "NetworkPolicy",
        "Deployment",
        "Service",
        "Ingress",
        "Secret",
    } <= kinds, kinds
    assert LAUNCHER_FILES, "no cluster-launcher YAML under deploy/launcher/"


@pytest.mark.parametrize("path,obj", OBJECTS, ids=[object_id(p, o) for p, o in OBJECTS])
def test_manifest_is_valid(path, obj):
    validate(obj)
    assert obj["metadata"].get("namespace") == "deptune", "every object lives in namespace deptune"


@pytest.mark.parametrize("path,obj", OBJECTS, ids=[object_id(p, o) for p, o in OBJECTS])
def test_manifest_follows_project_rules(path, obj):
    assert project_rule_errors(obj) == []


def _set(path: str, value: Any) -> Callable[[dict], None]:
    """A mutation: set (or with value=DELETE, delete) the dotted path; [i] indexes lists."""

    def mutate(obj: dict) -> None:
        keys = re.findall(r"[^.\[\]]+|\[\d+\]", path)
        node = obj
        for key in keys[:-1]:
            node = node[int(key[1:-1])] if key.startswith("[") else node[key]
        last: Any = int(keys[-1][1:-1]) if keys[-1].startswith("[") else keys[-1]
        if value is DELETE:
            del node[last]
        else:
            node[last] = value

    return mutate


DELETE = object()

# (kind, name, mutation, what is wrong): each broken copy must fail its schema.
BROKEN = [
    ("RayCluster", None, _set("spec.headGroupSpec.rayStartParams.num-cpus", 0), "num-cpus not a string"),
    ("RayCluster", None, _set("spec.workerGroupSpecs.[0].groupName", DELETE), "worker group without groupName"),
    ("RayCluster", None, _set("spec.workerGroupSpecs.[0].maxReplicas", "8"), "maxReplicas not an integer"),
    ("RayCluster", None, _set("spec.headGroupSpec.replicaz", 1), "unknown field"),
    ("RayCluster", None, _set("spec.authOptions.mode", "password"), "authOptions.mode not in the enum"),
    ("RayCluster", None, _set("spec.autoscalerOptions.version", "v3"), "autoscaler version not in the enum"),
    (
        "RayCluster",
        None,
        _set("spec.headGroupSpec.template.spec.containers.[0].resources.limits", ["4"]),
        "pod template: limits not a map",
    ),
    ("RayCluster", None, _set("spec.workerGroupSpecs.[0].template.spec.containerz", []), "pod template: unknown field"),
    ("RayJob", None, _set("spec.clusterSelector", {"ray.io/cluster": 1}), "clusterSelector value not a string"),
    ("RayJob", None, _set("spec.entrypointt", "x"), "unknown field"),
    ("RayJob", None, _set("spec.submitterPodTemplate.spec.containers.[0].name", DELETE), "container without name"),
    ("RayCronJob", None, _set("spec.schedule", DELETE), "no schedule"),
    ("RayCronJob", None, _set("spec.jobTemplate.backoffLimit", "0"), "backoffLimit not an integer"),
    ("RayCronJob", None, _set("spec.concurrencyPolicy", "Forbid"), "no such field in the pinned RayCronJob"),
    ("CronJob", None, _set("spec.schedule", 2), "schedule not a string"),
    (
        "CronJob",
        None,
        _set("spec.jobTemplate.spec.template.spec.containers.[0].env.[0].valueFrom", "x"),
        "valueFrom not an object",
    ),
    ("CronJob", None, _set("spec.concurrencyPolicys", "Forbid"), "unknown field"),
    ("NetworkPolicy", None, _set("spec.ingress.[0].from.[0].podSelector.matchLabels", ["x"]), "matchLabels not a map"),
    ("NetworkPolicy", None, _set("spec.podSelectorr", {}), "unknown field"),
    ("Deployment", "mlflow", _set("spec.selector", DELETE), "Deployment without selector"),
    (
        "Deployment",
        "mlflow",
        _set("spec.template.spec.containers.[0].ports.[0].containerPort", "5000"),
        "containerPort not an integer",
    ),
    ("Service", "mlflow", _set("spec.ports.[0].port", "five thousand"), "port not an integer"),
    ("Ingress", "mlflow", _set("spec.tls.[0].hosts", "mlflow.example.com"), "tls hosts not a list"),
    ("Secret", None, _set("stringData", {"password": 1}), "stringData value not a string"),
]


@pytest.mark.parametrize("kind,name,mutate,why", BROKEN, ids=[f"{k}-{w}" for k, _, _, w in BROKEN])
def test_broken_copy_fails_validation(kind, name, mutate, why):
    obj = find(kind, name)
    validate(obj)  # the original passes
    mutate(obj)
    with pytest.raises(jsonschema.ValidationError):
        validate(obj)


# Each broken copy must break one of the project's rules.
BROKEN_RULES = [
    ("CronJob", None, _set("spec.concurrencyPolicy", "Allow"), "concurrencyPolicy"),
    ("CronJob", None, _set("spec.concurrencyPolicy", DELETE), "concurrencyPolicy"),
    ("RayCluster", None, _set("spec.headGroupSpec.rayStartParams.num-cpus", "4"), "num-cpus"),
    ("RayCluster", None, _set("spec.headGroupSpec.serviceType", "LoadBalancer"), "ClusterIP"),
    ("RayCluster", None, _set("spec.authOptions", DELETE), "authOptions"),
    ("Service", "mlflow", lambda o: o["spec"].update(type="LoadBalancer", ports=[{"port": 8265}]), "exposes"),
    (
        "Service",
        "mlflow",
        lambda o: o["spec"].update(type="NodePort", ports=[{"port": 80, "targetPort": 10001}]),
        "exposes",
    ),
    ("Ingress", "mlflow", _set("spec.tls", DELETE), "TLS"),
    (
        "CronJob",
        None,
        _set(
            "spec.jobTemplate.spec.template.spec.containers.[0].env.[1]",
            {"name": "RAY_AUTH_TOKEN", "value": "0123456789abcdef"},
        ),
        "literal",
    ),
    (
        "Deployment",
        "mlflow",
        _set(
            "spec.template.spec.containers.[0].env.[0]",
            {"name": "MLFLOW_BACKEND_STORE_URI", "value": "postgresql://mlflow:hunter2@db:5432/deptune"},
        ),
        "password",
    ),
    (
        "Deployment",
        "mlflow",
        lambda o: o["spec"]["template"]["spec"]["containers"][0]["args"].append(
            "--backend-store-uri=postgresql://mlflow:hunter2@db/deptune"
        ),
        "command line",
    ),
    (
        "RayCluster",
        None,
        _set(
            "spec.workerGroupSpecs.[0].template.spec.containers.[0].env.[1]",
            {"name": "MLFLOW_TRACKING_PASSWORD", "value": "hunter2"},
        ),
        "literal",
    ),
]


@pytest.mark.parametrize(
    "kind,name,mutate,expected", BROKEN_RULES, ids=[f"{k}-{e}-{i}" for i, (k, _, _, e) in enumerate(BROKEN_RULES)]
)
def test_broken_copy_breaks_project_rules(kind, name, mutate, expected):
    obj = find(kind, name)
    assert project_rule_errors(obj) == []
    mutate(obj)
    errors = project_rule_errors(obj)
    assert any(expected in e for e in errors), errors


def test_secrets_are_referenced_not_inlined():
    """Secret objects exist only as clearly marked examples, and every secretKeyRef names one of them
    (or a Secret made by KubeRay / cert-manager)."""
    examples: dict[str, set[str]] = {}
    for path, obj in OBJECTS:
        if obj["kind"] != "Secret":
            continue
        assert path.name == "secrets.example.yaml", f"{object_id(path, obj)}: Secrets only in secrets.example.yaml"
        assert "EXAMPLE ONLY" in path.read_text() and "CHANGE-ME" in path.read_text()
        assert "data" not in obj, "example Secrets use readable stringData placeholders"
        for key, value in obj["stringData"].items():
            if re.search(r"password|secret|key|uri|url|ini", key, re.I) and key != "endpoint-url":
                assert "CHANGE-ME" in value, f"{object_id(path, obj)}: {key} must be a CHANGE-ME placeholder"
        examples[obj["metadata"]["name"]] = set(obj["stringData"])
    made_elsewhere = {"deptune-ray": {"auth_token"}}  # KubeRay generates it for authOptions.mode: token
    refs = 0
    for path, obj in OBJECTS:
        if obj["kind"] == "Secret":
            continue
        for container in _containers(obj):
            for env in container.get("env", []):
                ref = (env.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    refs += 1
                    keys = {**examples, **made_elsewhere}.get(ref["name"])
                    assert keys is not None, f"{object_id(path, obj)}: Secret {ref['name']} is documented nowhere"
                    assert ref["key"] in keys, f"{object_id(path, obj)}: {ref['name']} has no key {ref['key']}"
    assert refs >= 10
    volumes = [v for _, o in OBJECTS for v in o.get("spec", {}).get("template", {}).get("spec", {}).get("volumes", [])]
    for volume in volumes:
        if "secret" in volume:
            assert volume["secret"]["secretName"] in examples


def test_rayjob_and_cronjob_reach_the_shared_services():
    """The sweep's driver gets the MLflow URI, the study RDB and S3 credentials from the head's env; the
    entrypoints set a shared train.storage_path; the CronJob submits with the token to the head service."""
    cluster = find("RayCluster")
    head_env = {e["name"]: e for e in cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]}
    assert head_env["MLFLOW_TRACKING_URI"]["value"].startswith("http://mlflow.deptune.svc:")
    assert head_env["DEPTUNE_STUDY_STORAGE"]["valueFrom"]["secretKeyRef"]["name"] == "deptune-study-db"
    for job in (find("RayJob")["spec"], find("RayCronJob")["spec"]["jobTemplate"]):
        assert job["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
        assert job["entrypoint"].startswith("deptune sweep ")
        assert "train.storage_path=s3://" in job["entrypoint"]
        assert job["submitterPodTemplate"]["metadata"]["labels"]["deptune.io/ray-client"] == "true"
    cron = find("CronJob")["spec"]["jobTemplate"]["spec"]["template"]
    container = cron["spec"]["containers"][0]
    command = container["command"] + container["args"]
    assert command[:3] == ["ray", "job", "submit"]
    assert f"--address=http://{cluster['metadata']['name']}-head-svc.deptune.svc:8265" in command
    assert any(a.startswith("--working-dir=") for a in command)
    assert command[command.index("--") + 1 :][:2] == ["deptune", "sweep"]
    env = {e["name"]: e for e in container["env"]}
    assert env["RAY_AUTH_MODE"]["value"] == "token"
    assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "deptune-ray", "key": "auth_token"}
    assert cron["metadata"]["labels"]["deptune.io/ray-client"] == "true"


def test_networkpolicy_admits_only_labelled_clients_to_ray_ports():
    policies = [obj for _, obj in OBJECTS if obj["kind"] == "NetworkPolicy"]
    head = next(p for p in policies if p["spec"]["podSelector"]["matchLabels"].get("ray.io/node-type") == "head")
    for rule in head["spec"]["ingress"]:
        assert {p["port"] for p in rule["ports"]} <= RAY_PORTS
        for peer in rule["from"]:
            assert peer.get("podSelector", {}).get("matchLabels"), "every peer is selected by labels"
            assert "ipBlock" not in peer
    intra = next(p for p in policies if "ray.io/node-type" not in p["spec"]["podSelector"]["matchLabels"])
    assert intra["spec"]["ingress"] == [
        {"from": [{"podSelector": {"matchLabels": intra["spec"]["podSelector"]["matchLabels"]}}]}
    ]


def test_mlflow_server_flags_exist_in_the_installed_mlflow():
    """Every flag the Deployment passes is one `mlflow server` 3.17 knows; the backend store comes from the
    --backend-store-uri option's environment variable, which the Secret fills."""
    import click
    from mlflow.cli import server

    container = find("Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["mlflow", "server"]
    known = {opt: param for param in server.params if isinstance(param, click.Option) for opt in param.opts}
    flags = {}
    for arg in container["args"]:
        flag, _, value = arg.partition("=")
        assert flag in known, f"mlflow server has no option {flag}"
        flags[flag] = value
    assert flags["--app-name"] == "basic-auth"
    assert "--serve-artifacts" in flags and flags["--artifacts-destination"].startswith("s3://")
    assert "mlflow.example.com" in flags["--allowed-hosts"].split(",")
    assert known["--backend-store-uri"].envvar == "MLFLOW_BACKEND_STORE_URI"
    env = {e["name"]: e for e in container["env"]}
    assert "secretKeyRef" in env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]
    assert env["MLFLOW_AUTH_CONFIG_PATH"]["value"].startswith(container["volumeMounts"][0]["mountPath"])


def _ray_start_options() -> set[str]:
    import click
    from ray.scripts.scripts import start

    return {opt for param in start.params if isinstance(param, click.Option) for opt in param.opts}


def test_ray_start_params_are_ray_start_options():
    """KubeRay turns rayStartParams into `ray start --key=value`: each key must be a real option."""
    options = _ray_start_options()
    cluster = find("RayCluster")["spec"]
    for params in [
        cluster["headGroupSpec"]["rayStartParams"],
        *(g["rayStartParams"] for g in cluster["workerGroupSpecs"]),
    ]:
        for key in params:
            assert f"--{key}" in options, key


# --- cluster launcher --------------------------------------------------------------------------------------


def _launcher_schema() -> dict:
    import ray

    with open(Path(ray.__file__).parent / "autoscaler" / "ray-schema.json") as f:
        return json.load(f)


@pytest.mark.parametrize("path", LAUNCHER_FILES, ids=lambda p: p.name)
def test_launcher_config_is_valid(path):
    config = yaml.safe_load(path.read_text())
    jsonschema.Draft7Validator(_launcher_schema()).validate(config)
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}, "the head runs no tasks"
    starts = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in starts, "dashboard on the head's loopback only (SSH tunnel)"
    assert "RAY_AUTH_MODE=token" in starts and "RAY_AUTH_MODE=token" in " ".join(config["worker_start_ray_commands"])
    options = _ray_start_options()
    for flag in re.findall(r"(--[a-z-]+)", starts):
        assert flag in options, f"ray start has no option {flag}"
    gpu = [t for n, t in config["available_node_types"].items() if n != config["head_node_type"]]
    assert any(t["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot" for t in gpu)


@pytest.mark.parametrize(
    "mutate,why",
    [
        (_set("bogus_key", 1), "unknown top-level key"),
        (_set("provider", DELETE), "no provider"),
        (_set("available_node_types.head.resources.CPU", -1), "negative resource"),
        (_set("available_node_types.gpu_spot.node_config", DELETE), "node type without node_config"),
        (_set("max_workers", "8"), "max_workers not an integer"),
    ],
    ids=lambda x: x if isinstance(x, str) else "",
)
def test_broken_launcher_config_fails(mutate, why):
    config = yaml.safe_load((DEPLOY / "launcher" / "aws-gpu.yaml").read_text())
    mutate(config)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(_launcher_schema()).validate(config)


# --- one PostgreSQL database, separate schemas for MLflow and Optuna ---------------------------------------


def test_mlflow_and_optuna_share_one_postgres_database_in_separate_schemas():
    """The documented URLs (secrets.example.yaml, postgres-init.sql) work together on one database:
    MLflow's tracking and auth stores and deptune's Optuna study storage, each in its own schema."""
    base = os.environ.get("DEPTUNE_TEST_POSTGRES_URL")
    if not base:
        pytest.skip("DEPTUNE_TEST_POSTGRES_URL is not set (CI sets it to the PostgreSQL server on 127.0.0.1:5432)")
    import optuna
    import sqlalchemy as sa
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore as AuthStore
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    from deptune.sweep import study as study_mod

    admin = sa.create_engine(base.replace("postgresql://", "postgresql+psycopg://", 1), isolation_level="AUTOCOMMIT")
    db = f"deptune_deploy_{os.getpid()}"
    with admin.connect() as conn:
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS {db}"))
        conn.execute(sa.text(f"CREATE DATABASE {db}"))
    try:
        url = base.rsplit("/", 1)[0] + f"/{db}"
        engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
        with engine.begin() as conn:  # the CREATE SCHEMA lines of postgres-init.sql
            for line in (DEPLOY / "mlflow" / "postgres-init.sql").read_text().splitlines():
                if line.startswith("CREATE SCHEMA"):
                    conn.execute(sa.text(line.split(" AUTHORIZATION")[0]))
        engine.dispose()

        def documented(secret: str, key: str) -> str:
            """A URL from a secrets.example.yaml with this test's server and database put in."""
            for _path, obj in OBJECTS:
                if obj["kind"] == "Secret" and obj["metadata"]["name"] == secret:
                    value = obj["stringData"][key]
                    if key.endswith(".ini"):
                        value = re.search(r"database_uri = (\S+)", value).group(1)
                    scheme, rest = value.split("://", 1)
                    return f"{scheme}://{url.split('://', 1)[1]}?{rest.split('?', 1)[1]}"
            raise AssertionError(secret)

        tracking = SqlAlchemyStore(documented("deptune-mlflow-server", "backend-store-uri"), "/tmp")
        assert tracking.create_experiment("deploy-check")
        tracking.engine.dispose()
        auth = AuthStore()
        auth.init_db(documented("deptune-mlflow-auth-config", "basic_auth.ini"))
        auth.engine.dispose()
        os.environ[study_mod.STORAGE_ENV] = documented("deptune-study-db", "url")  # as the RayCluster sets it
        try:
            from deptune.specs import load_spec
            from deptune.sweep.config import SweepSpec

            spec = load_spec(REPO / "search_spaces" / "demo.yaml", None, kind=SweepSpec)
            storage = study_mod.open_storage(study_mod.storage_url(spec))
        finally:
            del os.environ[study_mod.STORAGE_ENV]
        optuna.create_study(storage=storage, study_name="deploy-check").optimize(
            lambda t: t.suggest_float("x", 0, 1), 2
        )
        storage.engine.dispose()
        engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT table_schema, table_name FROM information_schema.tables "
                    "WHERE table_name LIKE 'alembic_version%'"
                )
            ).fetchall()
        engine.dispose()
        assert {schema for schema, _ in rows} == {"mlflow", "mlflow_auth", "optuna"}
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
        admin.dispose()


def test_local_scripts_are_valid_bash():
    for script in (DEPLOY / "local").glob("*.sh"):
        subprocess.run(["bash", "-n", str(script)], check=True)
    if shutil.which("shellcheck"):
        subprocess.run(["shellcheck", "-x", "-S", "warning", *map(str, (DEPLOY / "local").glob("*.sh"))], check=True)
