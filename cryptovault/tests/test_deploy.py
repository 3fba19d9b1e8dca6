"""Deployment files are checked in CI like code.

Kubernetes manifests are validated offline against the Kubernetes OpenAPI schemas
bundled in kubernetes-validate (strict: unknown fields fail), KEDA's ScaledObject against
the CRD schema vendored in deploy/k8s/crds/ (strict too), then checked for what the
schemas cannot tell: probes, autoscalers, selectors. docker-compose.yml is parsed
with PyYAML (anchors resolved); deploy/nginx.conf is checked with ``nginx -t`` and then
served by a real nginx when one is installed (scripts/scale_demo.sh installs it).
"""

import ipaddress
import re
import shutil
import socket
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import jsonschema
import kubernetes_validate
import pytest
import yaml

from cryptovault.celery import CELERY_QUEUES

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
NGINX_CONF = ROOT / "deploy" / "nginx.conf"
CRDS = K8S / "crds"
# The oldest Kubernetes release the manifests must work on.
KUBERNETES_VERSION = "1.29"


def k8s_documents() -> list[tuple[str, dict]]:
    documents = []
    for path in sorted(K8S.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                documents.append((path.name, document))
    return documents


def k8s_objects(kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for _, d in k8s_documents() if d["kind"] == kind}


@pytest.mark.parametrize(
    "document",
    [d for _, d in k8s_documents()],
    ids=[f"{name}:{d['kind']}/{d['metadata']['name']}" for name, d in k8s_documents()],
)
def test_manifest_is_valid_against_the_kubernetes_schema(document):
    group = document["apiVersion"].partition("/")[0]
    if group in crd_schemas_by_group():
        crd_validate(document)
    else:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def crd_schemas_by_group() -> dict[str, dict[tuple[str, str], dict]]:
    """``{group: {(version, kind): openAPIV3Schema}}`` of the vendored CRDs."""
    schemas: dict[str, dict[tuple[str, str], dict]] = {}
    for path in sorted(CRDS.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        spec = crd["spec"]
        for version in spec["versions"]:
            schemas.setdefault(spec["group"], {})[(version["name"], spec["names"]["kind"])] = (
                version["schema"]["openAPIV3Schema"]
            )
    return schemas


def _strict(schema: dict) -> dict:
    """The CRD schema as the API server applies it, as JSON Schema: an object with declared
    properties takes no others (the server would silently prune them, so a misspelt
    field would be lost), and ``x-kubernetes-int-or-string`` is an integer or a string."""
    open_ended = schema.get("x-kubernetes-preserve-unknown-fields", False)
    schema = {key: value for key, value in schema.items() if not key.startswith("x-kubernetes")}
    if schema.get("type") == "object" and "properties" in schema and not open_ended:
        schema.setdefault("additionalProperties", False)
    for key in ("properties", "patternProperties"):
        if key in schema:
            schema[key] = {name: _strict(sub) for name, sub in schema[key].items()}
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            schema[key] = _strict(schema[key])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in schema:
            schema[key] = [_strict(sub) for sub in schema[key]]
    return schema


def _int_or_string(schema: dict) -> dict:
    if schema.get("x-kubernetes-int-or-string"):
        return {**schema, "type": ["integer", "string"]}
    return schema


def crd_validate(document: dict) -> None:
    group, _, version = document["apiVersion"].partition("/")
    schema = crd_schemas_by_group()[group][(version, document["kind"])]
    strict = _strict(_walk(schema, _int_or_string))
    # metadata is the API server's ObjectMeta, not described by the CRD.
    strict["properties"]["metadata"] = {"type": "object"}
    jsonschema.Draft7Validator(strict).validate(document)


def _walk(schema, change):
    if isinstance(schema, dict):
        return change({key: _walk(value, change) for key, value in schema.items()})
    if isinstance(schema, list):
        return [_walk(value, change) for value in schema]
    return schema


def test_crd_validation_refuses_what_keda_would_not_take():
    scaled = k8s_objects("ScaledObject")["cryptovault-worker"]
    crd_validate(scaled)
    misspelt = {**scaled, "spec": {**scaled["spec"], "maxReplicas": 12}}
    with pytest.raises(jsonschema.ValidationError, match="maxReplicas"):
        crd_validate(misspelt)
    untyped = {**scaled, "spec": {**scaled["spec"], "triggers": [{"metadata": {}}]}}
    with pytest.raises(jsonschema.ValidationError, match="'type' is a required property"):
        crd_validate(untyped)


def test_every_process_is_deployed_with_readiness_and_liveness_probes():
    deployments = k8s_objects("Deployment")
    assert set(deployments) == {
        "cryptovault-web",
        "cryptovault-worker",
        "cryptovault-beat",
        "cryptovault-simulator",
    }
    for name, deployment in deployments.items():
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            assert "readinessProbe" in container, name
            assert "livenessProbe" in container, name

    web = deployments["cryptovault-web"]["spec"]["template"]["spec"]["containers"][0]
    port_names = {p["name"]: p["containerPort"] for p in web["ports"]}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert web[probe]["httpGet"]["path"] == "/health"
        assert web[probe]["httpGet"]["port"] in port_names
    for name in ("cryptovault-worker", "cryptovault-beat"):
        container = deployments[name]["spec"]["template"]["spec"]["containers"][0]
        assert "cryptovault.health" in " ".join(container["readinessProbe"]["exec"]["command"])


def test_beat_is_a_singleton():
    beat = k8s_objects("Deployment")["cryptovault-beat"]["spec"]

    assert beat["replicas"] == 1
    assert beat["strategy"]["type"] == "Recreate"
    targets = {
        h["spec"]["scaleTargetRef"]["name"] for h in k8s_objects("HorizontalPodAutoscaler").values()
    }
    assert "cryptovault-beat" not in targets


def test_web_scales_on_cpu_and_worker_on_queue_length():
    deployments = k8s_objects("Deployment")
    hpas = k8s_objects("HorizontalPodAutoscaler")

    web = hpas["cryptovault-web"]["spec"]
    assert web["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "cryptovault-web",
    }
    assert [m["resource"]["name"] for m in web["metrics"] if m["type"] == "Resource"] == ["cpu"]
    web_container = deployments["cryptovault-web"]["spec"]["template"]["spec"]["containers"][0]
    assert web_container["resources"]["requests"]["cpu"]  # utilization needs a request

    # The worker scales on the Redis lists through KEDA, not on a metric nobody serves.
    assert "cryptovault-worker" not in hpas
    worker = k8s_objects("ScaledObject")["cryptovault-worker"]["spec"]
    assert worker["scaleTargetRef"]["name"] == "cryptovault-worker"
    assert {t["type"] for t in worker["triggers"]} == {"redis"}
    assert {t["metadata"]["listName"] for t in worker["triggers"]} == set(CELERY_QUEUES)
    worker_pod = deployments["cryptovault-worker"]["spec"]["template"]["spec"]
    assert "-Q celery,orders" in " ".join(worker_pod["containers"][0]["command"])
    assert worker["minReplicaCount"] >= 2
    for hpa in hpas.values():
        assert hpa["spec"]["minReplicas"] >= 2  # no single point of failure at rest


def test_the_worker_serves_metrics_on_an_internal_port_from_a_fresh_directory():
    worker = k8s_objects("Deployment")["cryptovault-worker"]["spec"]["template"]
    container = worker["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    port = int(env["METRICS_PORT"])
    assert {"name": "metrics", "containerPort": port} in container["ports"]
    assert worker["metadata"]["annotations"]["prometheus.io/port"] == str(port)
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert env["PROMETHEUS_MULTIPROC_DIR"] in mounts
    command = " ".join(container["command"])
    assert command.index('rm -rf "$PROMETHEUS_MULTIPROC_DIR"/*') < command.index("exec celery")
    for service in k8s_objects("Service").values():
        assert port not in {p.get("targetPort") for p in service["spec"]["ports"]}


def test_services_select_the_pods_they_front_and_config_is_referenced():
    deployments = k8s_objects("Deployment")
    for name, service in k8s_objects("Service").items():
        pod_labels = deployments[name]["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= pod_labels.items(), name
    config_maps = set(k8s_objects("ConfigMap"))
    for deployment in deployments.values():
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            refs = {e["configMapRef"]["name"] for e in container["envFrom"] if "configMapRef" in e}
            assert refs <= config_maps


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_web_is_scalable_behind_nginx():
    services = compose()["services"]
    web, nginx = services["web"], services["nginx"]

    # `--scale web=N` fails when replicas would share a fixed host port.
    assert "ports" not in web
    assert web["image"] == "cryptovault:local"  # still the shared &django definition
    assert "./deploy/nginx.conf:/etc/nginx/nginx.conf:ro" in nginx["volumes"]
    assert nginx["depends_on"]["web"]["condition"] == "service_healthy"
    assert any(str(p).endswith(":80") for p in nginx["ports"])
    assert "TRUSTED_PROXIES" in web["environment"]


def test_compose_trusts_forwarded_headers_only_from_its_own_network():
    document = compose()
    subnets = [c["subnet"] for c in document["networks"]["default"]["ipam"]["config"]]
    assert len(subnets) == 1
    network = ipaddress.ip_network(subnets[0])
    assert network.is_private
    for name, service in document["services"].items():
        # Every service is on the default network (so nginx's address is in the subnet).
        assert set(service.get("networks", ["default"])) == {"default"}, name

    for name in ("web", "migrate", "worker", "beat", "simulator"):
        environment = document["services"][name]["environment"]
        for variable in ("TRUSTED_PROXIES", "FORWARDED_ALLOW_IPS"):
            trusted = [ipaddress.ip_network(v) for v in environment[variable].split(",")]
            assert all(t.subnet_of(network) for t in trusted), (name, variable)
    command = " ".join(document["services"]["web"]["command"])
    assert '--forwarded-allow-ips "$$FORWARDED_ALLOW_IPS"' in command
    assert "*" not in command


def web_commands() -> dict[str, str]:
    """Every way this repository starts uvicorn."""
    procfile = dict(
        line.split(":", 1) for line in (ROOT / "Procfile").read_text().splitlines() if line
    )
    dockerfile_cmd = next(
        line for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("CMD")
    )
    k8s_web = k8s_objects("Deployment")["cryptovault-web"]["spec"]["template"]["spec"]
    return {
        "Procfile": procfile["web"],
        "Dockerfile": dockerfile_cmd,
        "compose": " ".join(compose()["services"]["web"]["command"]),
        "k8s": " ".join(k8s_web["containers"][0]["command"]),
    }


@pytest.mark.parametrize("where", ["Procfile", "Dockerfile", "compose", "k8s"])
def test_uvicorn_never_writes_an_access_log(where):
    # Its lines carry query strings: /ws/user?token=<access JWT>.
    command = web_commands()[where]
    assert "uvicorn" in command
    assert "--no-access-log" in command


def test_no_access_token_reaches_an_edge_log():
    conf = NGINX_CONF.read_text()
    log_format = re.search(r"log_format cv .*?;", conf, re.S).group(0)
    for variable in ("$request_uri", "$request ", '$request"', "$args", "$query_string"):
        assert variable not in log_format
    assert '"uri":"$uri"' in log_format and "$cv_log_query" in log_format
    # The map nginx evaluates, checked with Python's re (the same PCRE subset).
    pattern = re.search(r'map \$args \$cv_log_query \{\s*"~\*([^"]+)" "\[redacted\]";', conf)
    redacted = re.compile(pattern.group(1), re.I)
    for query in ("token=eyJ.x.y", "since=4&token=eyJ", "TOKEN=a", "%74oken=a", "access_token=a"):
        assert redacted.search(query), query
    for query in ("days=30", "coins=bitcoin,ethereum&since=12", "search=tok"):
        assert not redacted.search(query), query

    ingress = k8s_objects("Ingress")["cryptovault"]["metadata"]["annotations"]
    assert ingress["nginx.ingress.kubernetes.io/enable-access-log"] == "false"


def test_nginx_conf_balances_http_and_websockets_and_passes_client_headers():
    conf = NGINX_CONF.read_text()
    server_lines = [line for line in conf.splitlines() if line.strip().startswith("server web:")]
    upstream = re.search(r"upstream cv_web \{(.*?)\}", conf, re.S).group(1)

    assert len(server_lines) == 1 and "cv:upstream-servers" in server_lines[0]
    assert "keepalive" in upstream
    for directive in (
        "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
        "proxy_set_header X-Forwarded-Proto $scheme;",
        "proxy_set_header X-Request-ID $cv_request_id;",
        "proxy_set_header Upgrade $http_upgrade;",
        "proxy_set_header Connection $cv_connection;",
        "proxy_next_upstream error timeout http_502 http_504;",
    ):
        assert directive in conf


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def nginx_location(conf: str, prefix: str) -> str:
    """The body of ``location <prefix> { ... }`` (no nested blocks in ours)."""
    return re.search(rf"location {re.escape(prefix)} \{{(.*?)\}}", conf, re.S).group(1)


def test_nginx_passes_event_streams_unbuffered():
    conf = NGINX_CONF.read_text()
    stream = nginx_location(conf, "/api/v1/stream/")
    for directive in ("proxy_buffering off;", "proxy_cache off;", "gzip off;"):
        assert directive in stream
    read_timeout = re.search(r"proxy_read_timeout (\d+)h;", stream)
    assert read_timeout and int(read_timeout.group(1)) * 3600 > 15  # the keep-alive
    # HTTP/1.1 to the upstream (chunked responses, keepalive) comes from the server block.
    server = conf[conf.index("server {") :]
    assert "proxy_http_version 1.1;" in server and "proxy_http_version" not in stream
    assert "gzip on" not in conf

    ingress = k8s_objects("Ingress")["cryptovault"]["metadata"]["annotations"]
    assert ingress["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    assert int(ingress["nginx.ingress.kubernetes.io/proxy-read-timeout"]) > 15


@contextmanager
def nginx_in_front_of(tmp_path, upstream_port: int):
    """nginx with deploy/nginx.conf on a free port, in front of ``upstream_port``."""
    if shutil.which("nginx") is None:
        pytest.skip("nginx is not installed")
    port = free_port()
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        NGINX_CONF.read_text()
        .replace("server web:8000", f"server 127.0.0.1:{upstream_port}")
        .replace("listen 80;", f"listen 127.0.0.1:{port};")
    )
    command = ["nginx", "-p", str(tmp_path), "-c", str(conf)]
    globals_ = f"pid {tmp_path}/nginx.pid; daemon off;"
    checked = subprocess.run(  # noqa: S603 - fixed arguments
        [*command, "-t", "-g", globals_], capture_output=True, text=True, timeout=30
    )
    assert checked.returncode == 0, checked.stderr
    process = subprocess.Popen(  # noqa: S603
        [*command, "-g", globals_], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert time.monotonic() < deadline, "nginx did not start"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def edge(tmp_path):
    """nginx whose upstream is a closed port."""
    with nginx_in_front_of(tmp_path, free_port()) as url:
        yield url


def test_nginx_relays_each_event_while_the_stream_is_still_open(tmp_path):
    # An upstream that writes one event and then holds the response open until the
    # client has read it: a buffering or compressing proxy would sit on the event and
    # the read would hang. The upstream sends no X-Accel-Buffering, so this is nginx.conf.
    client_has_it = threading.Event()
    listener = socket.create_server(("127.0.0.1", 0))
    requests: list[bytes] = []

    def upstream():
        conn, _ = listener.accept()
        with conn:
            requests.append(conn.recv(65536))
            event = b"id: 1\nevent: order\ndata: {}\n\n"
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n"
                + f"{len(event):x}\r\n".encode()
                + event
                + b"\r\n"
            )
            client_has_it.wait(timeout=30)
            conn.sendall(b"0\r\n\r\n")

    server = threading.Thread(target=upstream, daemon=True)
    server.start()
    try:
        with nginx_in_front_of(tmp_path, listener.getsockname()[1]) as url:
            with httpx.stream(
                "GET",
                f"{url}/api/v1/stream/user",
                headers={"Accept-Encoding": "gzip", "Accept": "text/event-stream"},
                timeout=httpx.Timeout(10),  # a guard against a hang, not a speed figure
            ) as response:
                assert response.status_code == 200
                assert "content-encoding" not in response.headers
                lines = response.iter_lines()
                assert [next(lines) for _ in range(3)] == ["id: 1", "event: order", "data: {}"]
                client_has_it.set()
                assert list(lines) == [""]
    finally:
        client_has_it.set()
        server.join(timeout=10)
        listener.close()
    assert requests[0].startswith(b"GET /api/v1/stream/user HTTP/1.1\r\n")


def test_nginx_answers_in_the_api_error_format_when_no_instance_is_up(edge):
    response = httpx.get(f"{edge}/api/v1/coins", headers={"X-Request-ID": "edge-test-1"})

    assert response.status_code == 503
    assert response.json()["code"] == "service_unavailable"
    assert response.headers["Retry-After"] == "5"
    assert response.headers["X-Request-ID"] == "edge-test-1"


def test_nginx_refuses_huge_bodies_in_the_api_error_format(edge):
    response = httpx.post(f"{edge}/api/v1/orders", content=b"x" * (2 * 1024 * 1024))

    assert response.status_code == 413
    assert response.json()["code"] == "request_too_large"
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["X-Request-ID"])  # nginx's own id
