"""GET /metrics: Prometheus' text format, read with prometheus_client's own parser.

The CP is real (SQLite file, Git repository); its Bottle app is called through
WSGI, and once through the real server on loopback. Rollouts are driven with
the simulated agents of the rollout tests, as a user's `docklet deploy` would.
"""

from __future__ import annotations

import io
import json
import re
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import ADMIN_TOKEN, WSGIClient
from prometheus_client.parser import text_string_to_metric_families
from test_rollout import FAST, latest, stable_v1, step
from test_scheduler import Agent, put_app

from docklet.common.status import TokenScope
from docklet.cp.http.api import make_app
from docklet.cp.service.controlplane import ControlPlane
from docklet.cp.settings import CPConfig

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape_raw(
    cp: ControlPlane, token: str | None = ADMIN_TOKEN, app: Any = None
) -> tuple[int, dict[str, str], str]:
    """GET /metrics through the CP's WSGI app: (status, headers, body)."""
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/metrics",
        "QUERY_STRING": "",
        "SERVER_NAME": "test",
        "SERVER_PORT": "80",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr,
    }
    if token:
        environ["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    answer: list[Any] = []
    chunks = (app or make_app(cp))(environ, lambda s, h, *a: answer.append((s, dict(h))))
    body = b"".join(chunks).decode()
    return int(answer[0][0][:3]), answer[0][1], body


def scrape(cp: ControlPlane, app: Any = None) -> Samples:
    """Every sample of the answer, by (name, sorted labels)."""
    status, headers, body = scrape_raw(cp, app=app)
    assert status == 200, body
    assert headers["Content-Type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def read_token(cp: ControlPlane) -> str:
    return cp.tokens.create("viewer", TokenScope.READ, "test")


def test_metrics_parse_with_prometheus_own_parser_and_say_what_runs(cp: ControlPlane) -> None:
    a, b = Agent(cp, "a"), Agent(cp, "b")
    stable_v1(cp, a, b, replicas=3)
    status, _, body = scrape_raw(cp, read_token(cp))
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(body)}
    for name in (
        "docklet_nodes",
        "docklet_apps",
        "docklet_apps_actual",
        "docklet_rollouts_started",
        "docklet_rollouts_finished",
        "docklet_rollout_duration_seconds",
        "docklet_tasks_created",
        "docklet_tasks_finished",
        "docklet_task_latency_seconds",
        "docklet_pass_seconds",
        "docklet_write_transaction_seconds",
        "docklet_push_to_revision_seconds",
        "docklet_api_requests",
        "docklet_api_request_seconds",
        "docklet_long_polls_waiting",
        "docklet_long_poll_slots",
        "docklet_overloaded",
        "docklet_auth_failures",
    ):
        assert name in families, name
    samples = scrape(cp)
    assert value(samples, "docklet_nodes", status="online") == 2
    assert value(samples, "docklet_nodes", status="offline") == 0  # every status has a series
    assert value(samples, "docklet_apps", status="stable") == 1
    assert value(samples, "docklet_apps_actual", state="running") == 1
    assert value(samples, "docklet_replicas_running") == 3
    assert value(samples, "docklet_long_poll_slots") == cp.config.long_poll_slots
    assert value(samples, "docklet_tasks_created_total", kind="deploy") == 3
    assert value(samples, "docklet_tasks_finished_total", kind="deploy", outcome="done") == 3
    assert value(samples, "docklet_push_to_revision_seconds_count") == 1
    assert value(samples, "docklet_pass_seconds_count", stage="sync") >= 1
    assert value(samples, "docklet_pass_seconds_count", stage="reconcile") >= 2
    assert value(samples, "docklet_write_transaction_seconds_count") > 5


def test_metrics_need_a_read_token_unless_the_cp_opens_them(cp: ControlPlane) -> None:
    status, _, body = scrape_raw(cp, token=None)
    error = json.loads(body)["error"]
    assert (status, error["code"], error["status"]) == (401, "unauthorized", 401)
    assert scrape_raw(cp, token="dku_not-a-token")[0] == 401
    assert scrape_raw(cp, read_token(cp))[0] == 200
    samples = scrape(cp)
    assert value(samples, "docklet_auth_failures_total", answer="401") == 2
    assert (
        value(samples, "docklet_api_requests_total", route="/metrics", method="GET", status="401")
        == 2
    )

    cp.config = CPConfig(**{**dict(cp.config), "metrics_public": True})
    status, _, body = scrape_raw(cp, token=None)
    assert status == 200 and "docklet_nodes" in body


def test_api_calls_are_counted_by_route_pattern_never_the_raw_path(cp: ControlPlane) -> None:
    app = make_app(cp)
    client = WSGIClient(app)
    for name in ("one", "two", "three"):
        assert client.get(f"/api/apps/{name}")[0] == 404
    assert client.get("/api/health")[0] == 200
    assert client.get("/no/such/endpoint")[0] == 404
    samples = scrape(cp, app)
    get = {"method": "GET"}
    assert (
        value(samples, "docklet_api_requests_total", route="/api/apps/<name>", status="404", **get)
        == 3
    )
    assert (
        value(samples, "docklet_api_requests_total", route="/api/health", status="200", **get) == 1
    )
    assert value(samples, "docklet_api_requests_total", route="unmatched", status="404", **get) == 1
    assert value(samples, "docklet_api_request_seconds_count", route="/api/apps/<name>", **get) == 3
    assert not any("one" in str(labels) for _, labels in samples)  # no app name as a label


def test_a_rollout_moves_the_counters(cp: ControlPlane) -> None:
    a = Agent(cp, "a")
    stable_v1(cp, a)
    before = scrape(cp)
    put_app(cp, "web", replicas=2, image="nginx:1.27", rollout=FAST)
    step(cp, a)
    during = scrape(cp)
    assert (
        value(during, "docklet_rollouts_started_total")
        == value(before, "docklet_rollouts_started_total") + 1
    )
    assert value(during, "docklet_apps", status="rolling_update") == 1
    for _ in range(4):
        step(cp, a)
    assert latest(cp)["status"] == "stable"
    after = scrape(cp)
    finished = "docklet_rollouts_finished_total"
    assert value(after, finished, outcome="stable") == value(before, finished, outcome="stable") + 1
    assert value(after, "docklet_rollout_duration_seconds_count", outcome="stable") >= 1
    done = value(after, "docklet_tasks_finished_total", kind="deploy", outcome="done")
    assert done >= value(before, "docklet_tasks_finished_total", kind="deploy", outcome="done") + 2
    assert value(after, "docklet_tasks_created_total", kind="remove") >= 2  # the old ones
    assert value(after, "docklet_push_to_revision_seconds_count") == 2
    assert value(after, "docklet_apps", status="stable") == 1

    # A canary that fails is rolled back: its outcome has its own series.
    put_app(cp, "web", replicas=2, image="nginx:broken", rollout=FAST)
    step(cp, a, fail="pull nginx:broken: manifest unknown")
    step(cp, a)
    failed = scrape(cp)
    assert value(failed, finished, outcome="rolled_back") == 1
    assert value(failed, "docklet_tasks_finished_total", kind="deploy", outcome="failed") >= 1
    assert value(failed, "docklet_task_latency_seconds_count", kind="deploy", outcome="failed") >= 1


def test_each_control_plane_has_its_own_registry(config: CPConfig, tmp_path: Any) -> None:
    one = ControlPlane(config)
    two = ControlPlane(CPConfig(data_dir=tmp_path / "two"))
    try:
        Agent(one, "a")
        assert value(scrape_public(one), "docklet_nodes", status="online") == 1
        assert value(scrape_public(two), "docklet_nodes", status="online") == 0
    finally:
        one.store.close()
        two.store.close()


def scrape_public(cp: ControlPlane) -> Samples:
    cp.config = CPConfig(**{**dict(cp.config), "metrics_public": True})
    return scrape(cp)


@pytest.mark.parametrize("accept", ["", "application/openmetrics-text; version=1.0.0"])
def test_the_real_server_answers_a_scrape(served_cp: str, cp: ControlPlane, accept: str) -> None:
    request = urllib.request.Request(
        served_cp + "/metrics", headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Accept": accept}
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        body = answer.read().decode()
        content_type = answer.headers["Content-Type"]
    if accept:
        assert content_type.startswith("application/openmetrics-text") and body.endswith("# EOF\n")
    else:
        assert content_type.startswith("text/plain")
        assert any(f.name == "docklet_nodes" for f in text_string_to_metric_families(body))
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(served_cp + "/metrics", timeout=10)
    assert refused.value.code == 401
    assert json.loads(refused.value.read())["error"]["status"] == 401


def test_the_contrib_dashboard_and_scrape_example_name_real_metrics(cp: ControlPlane) -> None:
    """contrib/grafana/docklet.json graphs only series /metrics has (a renamed metric
    would leave a panel empty without a word)."""
    _, _, body = scrape_raw(cp)
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}
    served = {
        f.name + suffix
        for f in text_string_to_metric_families(body)
        for suffix in suffixes.get(f.type, ("",))
    }
    contrib = Path(__file__).resolve().parents[2] / "contrib"
    dashboard = json.loads((contrib / "grafana" / "docklet.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    named = {n for e in exprs for n in re.findall(r"docklet_\w+", e)}
    assert named and named <= served, named - served
    scrape_config = yaml.safe_load((contrib / "prometheus" / "prometheus.yml").read_text())
    (job,) = scrape_config["scrape_configs"]
    assert job["metrics_path"] == "/metrics" and job["authorization"]["type"] == "Bearer"
