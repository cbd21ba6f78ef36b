"""The Helm chart (deploy/helm/eventline), rendered by Helm and checked without a cluster.

``helm lint --strict`` and ``helm template`` (the pinned helm that ``make`` installs from
the npm registry, see scripts/install_helm.py) render the manifests; every object is then
validated against the Kubernetes JSON schemas of the oldest version the chart supports and
of the newest one kubernetes-validate ships, in strict mode: an unknown or misspelt field
is an error, as ``kubectl apply --validate=strict`` would make it. Then our own rules: one
Deployment per service with native gRPC probes, Services that select their pods, scaling,
security, shutdown timing, Secrets by reference only, and the migration hook.
"""

from __future__ import annotations

import copy
import re
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from eventline_shared.server.grpc_server import LIVENESS_HEALTH_NAME
from tests.unit.test_compose import known_variables

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "eventline"
HELM = ROOT / "deploy" / "tools" / "bin" / "helm"
RELEASE = "prod"
GRPC_SERVICES = {"ingestion": 50051, "segmentation": 50052, "campaigns": 50053}
COMPONENTS = [*GRPC_SERVICES, "gateway"]
SECRET_VARIABLES = {
    "EVENTLINE_DATABASE_URL",
    "EVENTLINE_REDIS_URL",
    "EVENTLINE_SERVICE_API_KEY",
    "EVENTLINE_PROVIDER_SECRET",
    "EVENTLINE_SMTP_PASSWORD",
    "EVENTLINE_SEGMENTATION_READ_DATABASE_URL",
    "EVENTLINE_UNSUBSCRIBE_SECRET",
    "EVENTLINE_CALLBACK_SECRET",
    "EVENTLINE_MAILGUN_SIGNING_KEY",
    "EVENTLINE_TWILIO_AUTH_TOKEN",
    "EVENTLINE_SENDGRID_VERIFICATION_KEY",
    "EVENTLINE_POSTMARK_WEBHOOK_AUTH",
}
GATEWAY_SECRETS = {
    "EVENTLINE_SERVICE_API_KEY",
    "EVENTLINE_UNSUBSCRIBE_SECRET",
    "EVENTLINE_CALLBACK_SECRET",
    "EVENTLINE_MAILGUN_SIGNING_KEY",
    "EVENTLINE_TWILIO_AUTH_TOKEN",
    "EVENTLINE_SENDGRID_VERIFICATION_KEY",
    "EVENTLINE_POSTMARK_WEBHOOK_AUTH",
}
"""What the gateway reads from Secrets: its key for its own calls, the providers' callback
secrets and the unsubscribe key (which campaigns shares, to write the links)."""
OLDEST = yaml.safe_load((CHART / "Chart.yaml").read_text())["kubeVersion"].removeprefix(">=").split("-")[0]
KUBERNETES_VERSIONS = [OLDEST, kubernetes_validate.latest_version()]


def run_helm(*args: str) -> subprocess.CompletedProcess[str]:
    assert HELM.exists(), f"{HELM.relative_to(ROOT)} is missing: `make helm` installs it (make test does)"
    return subprocess.run([HELM, *args], capture_output=True, text=True, timeout=120)


def helm(*args: str) -> str:
    result = run_helm(*args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def render(*values: str) -> list[dict[str, Any]]:
    """The chart's objects as `helm template` renders them, with ``--set`` values."""
    sets = [argument for value in values for argument in ("--set", value)]
    output = helm("template", RELEASE, str(CHART), "--namespace", "eventline", *sets)
    return [document for document in yaml.safe_load_all(output) if document]


def named(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {item["metadata"]["name"]: item for item in objects if item["kind"] == kind}


def component(name: str) -> str:
    return f"{RELEASE}-eventline-{name}"


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    [only] = deployment["spec"]["template"]["spec"]["containers"]
    return only  # type: ignore[no-any-return]


def env_of(workload: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A workload's container environment by name (each entry as rendered)."""
    return {entry["name"]: entry for entry in container(workload)["env"]}


def selects(selector: dict[str, str], deployment: dict[str, Any]) -> bool:
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    return all(labels.get(key) == value for key, value in selector.items())


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    return render()


def test_helm_lints_the_chart_strictly() -> None:
    output = helm("lint", "--strict", str(CHART))
    assert "0 chart(s) failed" in output


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize(
    "values",
    [
        (),
        ("ingestion.autoscaling.enabled=false", "gateway.enabled=false", "topologySpread.enabled=false"),
        ("serviceAccount.create=false", "imagePullSecrets[0].name=registry", "nodeSelector.pool=eventline"),
    ],
    ids=["defaults", "without-autoscaling-gateway-spread", "pull-secret-node-selector"],
)
def test_every_object_is_valid_for_kubernetes_strictly(version: str, values: tuple[str, ...]) -> None:
    rendered = render(*values)
    assert rendered
    for item in rendered:
        kubernetes_validate.validate(item, version, strict=True)


@pytest.mark.parametrize(
    ("value", "said"),
    [
        ("ingestion.autoscalng.enabled=false", "'autoscalng' not allowed"),
        ("shutdown.graceSeconds=-1", "/shutdown/graceSeconds"),
        ("config.EVENTLINE_DATABASE_URL=postgresql://eventline:secret@db/eventline", "/config"),
        ("topologySpread.whenUnsatisfiable=Sometimes", "/topologySpread/whenUnsatisfiable"),
    ],
)
def test_helm_refuses_values_the_chart_does_not_know(value: str, said: str) -> None:
    """values.schema.json: a misspelt value fails the install instead of being ignored, and a
    credential cannot be put in plain configuration."""
    result = run_helm("template", RELEASE, str(CHART), "--set", value)
    assert result.returncode != 0
    assert said in result.stderr


def test_the_schema_check_refuses_unknown_fields_and_wrong_types(objects: list[dict[str, Any]]) -> None:
    deployment = copy.deepcopy(named(objects, "Deployment")[component("ingestion")])
    kubernetes_validate.validate(deployment, OLDEST, strict=True)
    container(deployment)["livenessProbes"] = container(deployment).pop("livenessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="livenessProbes"):
        kubernetes_validate.validate(deployment, OLDEST, strict=True)
    deployment = copy.deepcopy(named(objects, "Deployment")[component("ingestion")])
    container(deployment)["readinessProbe"]["grpc"]["port"] = "grpc"  # a grpc probe takes a number
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, OLDEST, strict=True)


def test_one_deployment_per_service_with_native_grpc_probes(objects: list[dict[str, Any]]) -> None:
    deployments = named(objects, "Deployment")
    assert set(deployments) == {component(name) for name in COMPONENTS}
    for name, port in GRPC_SERVICES.items():
        main = container(deployments[component(name)])
        assert main["command"] == ["python", "-m", f"eventline_{name}"]
        assert {p["name"]: p["containerPort"] for p in main["ports"]} == {
            "grpc": port,
            "metrics": port - 41000,
        }
        env = env_of(deployments[component(name)])
        assert env[f"EVENTLINE_{name.upper()}_PORT"]["value"] == str(port)
        assert env[f"EVENTLINE_{name.upper()}_HOST"]["value"] == "0.0.0.0"
        # Liveness must not follow dependencies (a PostgreSQL outage would restart every pod);
        # readiness follows "" (NOT_SERVING while a required dependency is down).
        for probe in ("startupProbe", "livenessProbe"):
            assert main[probe]["grpc"] == {"port": port, "service": LIVENESS_HEALTH_NAME}, probe
        assert main["readinessProbe"]["grpc"] == {"port": port, "service": ""}
    gateway = container(deployments[component("gateway")])
    assert gateway["command"] == ["python", "-m", "eventline_gateway"]
    assert gateway["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert gateway["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert gateway["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert env_of(deployments[component("gateway")])["EVENTLINE_GATEWAY_PORT"]["value"] == "8080"


def test_services_select_their_own_pods_by_named_ports(objects: list[dict[str, Any]]) -> None:
    deployments = named(objects, "Deployment")
    services = named(objects, "Service")
    expected = {component(name) for name in COMPONENTS} | {
        f"{component(name)}-headless" for name in GRPC_SERVICES
    }
    assert set(services) == expected
    for service_name, service in services.items():
        [target] = [d for d in deployments.values() if selects(service["spec"]["selector"], d)]
        declared = {port["name"] for port in container(target)["ports"]}
        assert {port["targetPort"] for port in service["spec"]["ports"]} <= declared, service_name
        headless = service_name.endswith("-headless")
        assert (service["spec"].get("clusterIP") == "None") == headless, service_name
    for name, port in GRPC_SERVICES.items():
        for service_name in (component(name), f"{component(name)}-headless"):
            grpc_port = next(p for p in services[service_name]["spec"]["ports"] if p["name"] == "grpc")
            assert grpc_port["port"] == port
            assert grpc_port["appProtocol"] == "kubernetes.io/h2c"  # cleartext HTTP/2: gRPC


def test_calls_between_services_go_to_their_services(objects: list[dict[str, Any]]) -> None:
    deployments = named(objects, "Deployment")
    services = named(objects, "Service")
    campaigns = env_of(deployments[component("campaigns")])
    # The headless Service, so that the campaigns' round_robin channel sees every segmentation pod.
    assert campaigns["EVENTLINE_SEGMENTATION_ADDR"]["value"] == f"dns:///{component('segmentation')}-headless:50052"
    assert f"{component('segmentation')}-headless" in services
    gateway = env_of(deployments[component("gateway")])
    for name, port in GRPC_SERVICES.items():
        host, _, target_port = gateway[f"EVENTLINE_{name.upper()}_ADDR"]["value"].partition(":")
        assert host in services and int(target_port) == port
    address = "dns:///prod-eventline-segmentation-headless:50052"
    changed = named(render(f"campaigns.segmentationAddress={address}"), "Deployment")
    assert env_of(changed[component("campaigns")])["EVENTLINE_SEGMENTATION_ADDR"]["value"] == address


def test_each_service_scales_on_cpu_and_keeps_replicas_through_disruptions(
    objects: list[dict[str, Any]],
) -> None:
    deployments = named(objects, "Deployment")
    autoscalers = named(objects, "HorizontalPodAutoscaler")
    budgets = named(objects, "PodDisruptionBudget")
    assert set(autoscalers) == set(budgets) == set(deployments)
    for name, deployment in deployments.items():
        target = autoscalers[name]["spec"]["scaleTargetRef"]
        assert (target["kind"], target["name"]) == ("Deployment", name)
        assert autoscalers[name]["spec"]["minReplicas"] >= 2
        assert "replicas" not in deployment["spec"]  # the autoscaler owns it; an upgrade must not reset it
        assert selects(budgets[name]["spec"]["selector"]["matchLabels"], deployment)
        assert budgets[name]["spec"]["maxUnavailable"] == 1
        assert [
            d for d in deployments.values() if selects(budgets[name]["spec"]["selector"]["matchLabels"], d)
        ] == [deployment]
    fixed = render("ingestion.autoscaling.enabled=false", "ingestion.replicas=3")
    assert named(fixed, "Deployment")[component("ingestion")]["spec"]["replicas"] == 3
    assert component("ingestion") not in named(fixed, "HorizontalPodAutoscaler")


def test_pods_run_unprivileged_on_a_read_only_root_with_requests_and_limits(
    objects: list[dict[str, Any]],
) -> None:
    [image_uid] = re.findall(r"useradd .*--uid (\d+)", (ROOT / "Dockerfile").read_text())
    workloads = [*named(objects, "Deployment").values(), *named(objects, "Job").values()]
    assert len(workloads) == len(COMPONENTS) + 1
    for workload in workloads:
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == int(image_uid) != 0  # the image's own user
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        for each in pod["containers"]:
            assert each["securityContext"]["readOnlyRootFilesystem"] is True
            assert each["securityContext"]["allowPrivilegeEscalation"] is False
            assert each["securityContext"]["capabilities"]["drop"] == ["ALL"]
            for bound in ("requests", "limits"):
                assert set(each["resources"][bound]) == {"cpu", "memory"}, (
                    workload["metadata"]["name"],
                    bound,
                )
    for deployment in named(objects, "Deployment").values():
        pod = deployment["spec"]["template"]["spec"]
        volumes = {volume["name"]: volume for volume in pod["volumes"]}
        assert "emptyDir" in volumes["tmp"]
        assert {"name": "tmp", "mountPath": "/tmp"} in container(deployment)["volumeMounts"]


def test_the_grace_period_covers_the_prestop_wait_the_rpc_grace_and_the_close() -> None:
    for values, expected_grace, expected_total in [((), 10, 25), (("shutdown.graceSeconds=30",), 30, 45)]:
        for deployment in named(render(*values), "Deployment").values():
            pod = deployment["spec"]["template"]["spec"]
            grace = int(env_of(deployment)["EVENTLINE_SHUTDOWN_GRACE_S"]["value"])
            prestop = container(deployment)["lifecycle"]["preStop"]["exec"]["command"]
            assert prestop[0] == "sleep"
            assert grace == expected_grace
            assert pod["terminationGracePeriodSeconds"] == expected_total
            assert pod["terminationGracePeriodSeconds"] >= int(prestop[1]) + grace + 5


def test_replicas_spread_over_zones_and_nodes(objects: list[dict[str, Any]]) -> None:
    for deployment in named(objects, "Deployment").values():
        constraints = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
        assert [c["topologyKey"] for c in constraints] == [
            "topology.kubernetes.io/zone",
            "kubernetes.io/hostname",
        ]
        for constraint in constraints:
            assert selects(constraint["labelSelector"]["matchLabels"], deployment)
            assert constraint["matchLabelKeys"] == ["pod-template-hash"]


def test_credentials_come_from_secrets_by_reference_only() -> None:
    rendered = render(
        "secrets.databaseUrl.name=pg-app",
        "secrets.databaseUrl.key=uri",
        "config.EVENTLINE_AUTH=true",
    )
    assert not [item for item in rendered if item["kind"] == "Secret"]  # the chart creates none
    workloads = [*named(rendered, "Deployment").values(), *named(rendered, "Job").values()]
    seen: set[str] = set()
    for workload in workloads:
        for name, entry in env_of(workload).items():
            assert "://" not in entry.get("value", "") or "@" not in entry.get("value", ""), name
            if name in SECRET_VARIABLES:
                seen.add(name)
                assert "value" not in entry, name
                reference = entry["valueFrom"]["secretKeyRef"]
                if name == "EVENTLINE_DATABASE_URL":
                    assert (reference["name"], reference["key"]) == ("pg-app", "uri")
                required = name in {"EVENTLINE_DATABASE_URL", "EVENTLINE_REDIS_URL"}
                assert reference.get("optional", False) is not required, name
    assert seen == SECRET_VARIABLES
    deployments = named(rendered, "Deployment")
    assert "EVENTLINE_DATABASE_URL" not in env_of(deployments[component("gateway")])  # it opens no database
    assert "EVENTLINE_REDIS_URL" not in env_of(deployments[component("segmentation")])
    assert "EVENTLINE_SERVICE_API_KEY" in env_of(deployments[component("campaigns")])
    assert SECRET_VARIABLES & set(env_of(deployments[component("gateway")])) == GATEWAY_SECRETS
    assert "EVENTLINE_UNSUBSCRIBE_SECRET" in env_of(deployments[component("campaigns")])
    assert not {"EVENTLINE_CALLBACK_SECRET", "EVENTLINE_UNSUBSCRIBE_SECRET"} & set(
        env_of(deployments[component("ingestion")])
    )


def test_a_callback_secret_is_read_from_the_secret_and_key_given() -> None:
    rendered = render("secrets.sendgridVerificationKey.name=providers", "secrets.sendgridVerificationKey.key=sg")
    reference = env_of(named(rendered, "Deployment")[component("gateway")])["EVENTLINE_SENDGRID_VERIFICATION_KEY"]
    assert reference["valueFrom"]["secretKeyRef"] == {"name": "providers", "key": "sg", "optional": True}


def test_a_migration_hook_runs_before_every_install_and_upgrade_and_services_only_check(
    objects: list[dict[str, Any]],
) -> None:
    [job] = named(objects, "Job").values()
    annotations = job["metadata"]["annotations"]
    assert set(annotations["helm.sh/hook"].split(",")) == {"pre-install", "pre-upgrade"}
    assert "hook-succeeded" in annotations["helm.sh/hook-delete-policy"]
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and job["spec"]["backoffLimit"] >= 1
    [migrate] = pod["containers"]
    assert migrate["command"] == ["eventline", "migrate"]
    assert set(env_of(job)) == {"EVENTLINE_DATABASE_URL"}
    assert "serviceAccountName" not in pod  # hooks run before the chart's ServiceAccount exists
    deployments = named(objects, "Deployment")
    for name in GRPC_SERVICES:
        assert env_of(deployments[component(name)])["EVENTLINE_MIGRATE"]["value"] == "false"
    images = {container(workload)["image"] for workload in [job, *deployments.values()]}
    assert len(images) == 1


def test_every_variable_set_is_one_the_code_reads(objects: list[dict[str, Any]]) -> None:
    known = known_variables()
    for workload in [*named(objects, "Deployment").values(), *named(objects, "Job").values()]:
        assert set(env_of(workload)) <= known, set(env_of(workload)) - known


def test_without_the_gateway_nothing_of_it_is_rendered() -> None:
    rendered = render("gateway.enabled=false")
    assert not [item for item in rendered if item["metadata"]["name"] == component("gateway")]
    assert component("ingestion") in named(rendered, "Deployment")
