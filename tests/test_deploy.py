"""Static checks of the deployment files: Dockerfile, .dockerignore and docker-compose.yml.

No Docker engine runs here, so these read the files and check that they agree with each other
and with the server's settings (gradwire_server.config): ports, the data directory, the
healthcheck, the shutdown timeouts, and that every GRADWIRE_* variable is a real setting.
`docker compose config` validates the compose file too when the compose plugin is installed.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import pathlib
import re
import shlex
import shutil
import subprocess

import pytest
import yaml
from packaging.requirements import Requirement

from gradwire_server.config import ENV_PREFIX, Settings, parse_settings

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERIGNORE = ROOT / ".dockerignore"
SERVICE = "gradwire"
VOLUME = "gradwire-data"


# --- Dockerfile parsing -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Instruction:
    keyword: str  # upper-case: FROM, RUN, ENV, ...
    args: str  # the rest of the logical line, continuations joined


def parse_dockerfile(text: str) -> list[Instruction]:
    """Split a Dockerfile into instructions, joining `\\` continuations as Docker does.

    Comment lines are dropped, also inside a continuation (Docker does the same).
    """
    instructions: list[Instruction] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical = (pending + line).strip()
        pending = ""
        keyword, _, args = logical.partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip()))
    assert not pending, f"Dockerfile ends inside a line continuation: {pending!r}"
    return instructions


def _substitute(value: str, variables: dict[str, str]) -> str:
    """Expand $VAR and ${VAR} (and ${VAR:-default}) as Docker does in FROM / ENV."""

    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(3)
        default = m.group(2)
        if name in variables and variables[name] != "":
            return variables[name]
        return default if default is not None else ""

    return re.sub(r"\$\{(\w+)(?::-([^}]*))?\}|\$(\w+)", repl, value)


def _key_values(args: str) -> dict[str, str]:
    """ENV / ARG arguments: `K=V K2="V 2"`, or the legacy `ENV K V` form."""
    tokens = shlex.split(args)
    if tokens and "=" not in tokens[0]:
        return {tokens[0]: " ".join(tokens[1:])}
    return dict(t.partition("=")[::2] for t in tokens)


def _exec_form(args: str) -> list[str] | None:
    """The JSON array of an exec-form CMD / ENTRYPOINT / HEALTHCHECK CMD, or None if shell form."""
    if not args.startswith("["):
        return None
    parsed = json.loads(args)
    assert isinstance(parsed, list) and all(isinstance(a, str) for a in parsed), f"bad exec form: {args}"
    return parsed


@pytest.fixture(scope="module")
def dockerfile() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE.read_text())


def _all(instructions: list[Instruction], keyword: str) -> list[Instruction]:
    return [i for i in instructions if i.keyword == keyword]


def _one(instructions: list[Instruction], keyword: str) -> Instruction:
    found = _all(instructions, keyword)
    assert len(found) == 1, f"expected one {keyword} in the Dockerfile, found {len(found)}: {found}"
    return found[0]


def _args(instructions: list[Instruction]) -> dict[str, str]:
    """Every ARG's default value (one stage, so global and stage ARGs share one namespace)."""
    values: dict[str, str] = {}
    for instr in _all(instructions, "ARG"):
        values.update(_key_values(instr.args))
    return values


def _base_image(instructions: list[Instruction]) -> str:
    (image,) = [t for t in _one(instructions, "FROM").args.split() if not t.startswith("--")][:1]
    return _substitute(image, _args(instructions))


def _image_env(instructions: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for instr in _all(instructions, "ENV"):
        for key, value in _key_values(instr.args).items():
            env[key] = _substitute(value, env)
    return env


def _gradwire_env(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith(ENV_PREFIX)}


def _healthcheck_command(instructions: list[Instruction]) -> list[str]:
    args = _one(instructions, "HEALTHCHECK").args
    m = re.fullmatch(r"(?:--\S+\s+)*CMD\s+(.+)", args)
    assert m, f"HEALTHCHECK must run a command, got {args!r}"
    return _exec_form(m.group(1)) or shlex.split(m.group(1))


# --- compose parsing --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def service(compose: dict) -> dict:
    assert SERVICE in compose.get("services", {}), f"no service {SERVICE!r} in {COMPOSE_FILE.name}"
    return compose["services"][SERVICE]


def _compose_env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # ["KEY=value", ...]
        env = dict(item.partition("=")[::2] for item in env)
    for key, value in env.items():
        assert value is not None, f"{key} has no value in {COMPOSE_FILE.name}; give it one"
        assert isinstance(value, (str, int, float)) and not isinstance(value, bool), (
            f"{key}: quote the value in {COMPOSE_FILE.name} (YAML turned it into {value!r})"
        )
    return {k: str(v) for k, v in env.items()}


def _effective_settings(dockerfile: list[Instruction], service: dict) -> Settings:
    """The settings the container starts with: the image's ENV, then compose's environment."""
    env = {**_gradwire_env(_image_env(dockerfile)), **_gradwire_env(_compose_env(service))}
    return parse_settings([], env)


_DURATION_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}


def parse_duration(value: str | int | float) -> float:
    """A compose duration ("30s", "1m30s", "1.5h", "500ms") in seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip()
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|ns|h|m|s)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a compose duration: {value!r}"
    return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)


def test_parse_duration() -> None:
    assert parse_duration("30s") == 30
    assert parse_duration("1m30s") == 90
    assert parse_duration("500ms") == 0.5
    assert parse_duration(12) == 12
    with pytest.raises(AssertionError):
        parse_duration("30 seconds")


def test_parse_dockerfile_joins_continuations() -> None:
    text = "FROM x\n# note\nRUN a \\\n  # inner comment\n  && b\nenv A=1 \\\n    B=\"two words\"\n"
    assert parse_dockerfile(text) == [
        Instruction("FROM", "x"),
        Instruction("RUN", "a  && b"),
        Instruction("ENV", 'A=1  B="two words"'),
    ]
    assert _image_env(parse_dockerfile(text)) == {"A": "1", "B": "two words"}


def _published_container_ports(service: dict) -> dict[int, int]:
    """{container port: host port} from the short ("H:C", "IP:H:C") or long syntax."""
    published: dict[int, int] = {}
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            published[int(entry["target"])] = int(entry["published"])
        else:
            parts = str(entry).split("/")[0].split(":")
            assert len(parts) >= 2, f"publish the port on the host explicitly, got {entry!r}"
            published[int(parts[-1])] = int(parts[-2])
    return published


def _mounts(service: dict) -> dict[str, str]:
    """{target: source} of the service's volumes, short ("src:dst[:mode]") or long syntax."""
    mounts: dict[str, str] = {}
    for entry in service.get("volumes", []):
        if isinstance(entry, dict):
            mounts[entry["target"]] = entry.get("source", "")
        else:
            source, _, rest = str(entry).partition(":")
            mounts[rest.split(":")[0]] = source
    return mounts


# --- compose ----------------------------------------------------------------------------------


def test_compose_builds_and_tags_the_image(service: dict) -> None:
    build = service.get("build")
    context = build if isinstance(build, str) else (build or {}).get("context")
    assert context in {".", "./"}, f"build from the repository root, got {build!r}"
    dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
    assert (ROOT / dockerfile).is_file()
    assert service.get("image") == "gradwire:latest"


def test_compose_publishes_the_server_port(dockerfile: list[Instruction], service: dict) -> None:
    port = _effective_settings(dockerfile, service).port
    assert port == 50051
    assert _published_container_ports(service).get(port) == 50051, f"publish {port} as 50051, got {service.get('ports')}"


def test_compose_mounts_named_volume_at_data_dir(compose: dict, dockerfile: list[Instruction], service: dict) -> None:
    data_dir = str(_effective_settings(dockerfile, service).data_dir)
    mounts = _mounts(service)
    assert mounts.get(data_dir) == VOLUME, f"mount the named volume {VOLUME!r} at {data_dir}, got {mounts}"
    assert VOLUME in (compose.get("volumes") or {}), f"declare {VOLUME!r} under top-level volumes"


def test_compose_reserves_the_gpu(service: dict) -> None:
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert any(
        d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) and d.get("count", d.get("device_ids")) for d in devices
    ), f"reserve an nvidia GPU, got {devices}"


def test_compose_healthcheck_uses_grpc_health(dockerfile: list[Instruction], service: dict) -> None:
    check = service["healthcheck"]
    test = check["test"]
    assert isinstance(test, list) and test[0] == "CMD", f"use the exec form ['CMD', ...], got {test!r}"
    command = test[1:]
    assert command[:2] == ["gradwire", "health"], f"probe with `gradwire health`, got {command}"
    assert not {"curl", "wget"} & {pathlib.PurePath(t).name for t in command}
    port = _effective_settings(dockerfile, service).port
    assert "--target" in command and command[command.index("--target") + 1] == f"localhost:{port}", command
    for key in ("interval", "timeout", "start_period"):
        assert parse_duration(check[key]) > 0, f"healthcheck.{key}"
    assert parse_duration(check["timeout"]) < parse_duration(check["interval"])
    assert int(check["retries"]) >= 1


def test_compose_stop_grace_outlasts_server_grace(dockerfile: list[Instruction], service: dict) -> None:
    # From compose's environment, else the image's ENV, else the Settings default.
    server_grace = _effective_settings(dockerfile, service).grace_period_s
    stop_grace = parse_duration(service.get("stop_grace_period", "10s"))  # Docker's default is 10 s
    assert stop_grace > server_grace, f"stop_grace_period {stop_grace}s must outlast the server's grace {server_grace}s"


def test_compose_env_vars_are_settings(service: dict) -> None:
    env = _gradwire_env(_compose_env(service))
    assert env, "compose sets no GRADWIRE_* variable"
    fields = {ENV_PREFIX + f.name.upper() for f in dataclasses.fields(Settings)}
    assert set(env) <= fields, f"not settings: {sorted(set(env) - fields)}"
    parse_settings([], env)  # raises on an ill-typed or out-of-range value


def test_compose_env_has_no_image_only_settings(dockerfile: list[Instruction], service: dict) -> None:
    # Host, port and data dir belong to the image: the healthcheck, the published port and
    # the volume are written against them, and the tests above check they agree.
    settings = _effective_settings(dockerfile, service)
    assert (settings.host, settings.port, str(settings.data_dir)) == ("[::]", 50051, "/data")


def test_compose_restart_and_init(service: dict) -> None:
    assert service.get("restart") == "unless-stopped"
    assert service.get("init") is True


def test_compose_lets_client_containers_share_memory(service: dict) -> None:
    """Triton's system shared memory extension (on by default) needs the clients in the server's
    IPC namespace, and room in its /dev/shm beyond Docker's 64 MB."""
    assert service.get("ipc") == "shareable"
    size = str(service.get("shm_size", "64m")).lower().rstrip("b")
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    held = int(size[:-1]) * units[size[-1]] if size[-1] in units else int(size)
    assert held >= 1 << 30, service.get("shm_size")


def test_docker_compose_config_validates() -> None:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker client: docker-compose.yml checked statically only")
    version = subprocess.run([docker, "compose", "version"], capture_output=True, text=True, timeout=30)
    if version.returncode != 0:
        why = (version.stderr or version.stdout).strip().splitlines()[:1]
        pytest.skip(f"docker compose plugin not installed ({' '.join(why)}): docker-compose.yml checked statically only")
    result = subprocess.run(
        [docker, "compose", "-f", str(COMPOSE_FILE), "config", "-q"], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert result.returncode == 0, result.stderr


# --- Dockerfile -------------------------------------------------------------------------------


def test_dockerfile_base_is_cuda_pytorch_in_range(dockerfile: list[Instruction]) -> None:
    image = _base_image(dockerfile)
    assert "cuda" in image, f"the base image must ship CUDA, got {image}"
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11+")
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    torch_req = next(Requirement(r) for r in pyproject["project"]["optional-dependencies"]["server"] if Requirement(r).name == "torch")
    m = re.fullmatch(r"(?:docker\.io/)?pytorch/pytorch:(\d+\.\d+\.\d+)-cuda[\d.]+-cudnn\d+-(?:runtime|devel)(?:@sha256:[0-9a-f]{64})?", image)
    assert m, f"expected an official pytorch/pytorch:<torch>-cuda<x>-cudnn<y>-runtime tag, got {image}"
    assert torch_req.specifier.contains(m.group(1)), f"{image} ships torch {m.group(1)}, outside {torch_req}"


def test_dockerfile_installs_server_extra_keeping_base_torch(dockerfile: list[Instruction]) -> None:
    runs = " ".join(i.args for i in _all(dockerfile, "RUN"))
    assert re.search(r"pip install [^&;]*--no-cache-dir[^&;]*'\.\[server\]'", runs), "pip install --no-cache-dir '.[server]'"
    assert "--constraint" in runs or "--no-deps" in runs, "keep the base image's torch"


def test_dockerfile_runs_as_non_root_before_cmd(dockerfile: list[Instruction]) -> None:
    keywords = [i.keyword for i in dockerfile]
    cmd_at = keywords.index("CMD")
    users = [i.args.split(":")[0] for i in dockerfile[:cmd_at] if i.keyword == "USER"]
    assert users, "set a USER before CMD"
    assert users[-1] not in {"root", "0"}, f"the server must not run as root, got USER {users[-1]}"
    assert not [i for i in dockerfile[cmd_at:] if i.keyword == "USER"], "no USER after CMD"


def test_dockerfile_cmd_is_exec_form_serve(dockerfile: list[Instruction]) -> None:
    assert not _all(dockerfile, "ENTRYPOINT"), "no ENTRYPOINT: CMD alone says what runs"
    assert _exec_form(_one(dockerfile, "CMD").args) == ["gradwire", "serve"]
    assert _one(dockerfile, "STOPSIGNAL").args == "SIGTERM"


def test_dockerfile_healthcheck_uses_grpc_health(dockerfile: list[Instruction]) -> None:
    command = _healthcheck_command(dockerfile)
    assert command[:2] == ["gradwire", "health"], f"probe with `gradwire health`, got {command}"
    assert not {"curl", "wget"} & {pathlib.PurePath(t).name for t in command}
    port = parse_settings([], _gradwire_env(_image_env(dockerfile))).port
    assert "--target" in command and command[command.index("--target") + 1] == f"localhost:{port}", command


def test_dockerfile_env_matches_compose(dockerfile: list[Instruction], service: dict) -> None:
    image_env = _gradwire_env(_image_env(dockerfile))
    settings = parse_settings([], image_env)  # every GRADWIRE_* in the image is a valid setting
    assert image_env["GRADWIRE_DATA_DIR"] in _mounts(service), "the compose volume must mount at GRADWIRE_DATA_DIR"
    exposed = {int(p.split("/")[0]) for i in _all(dockerfile, "EXPOSE") for p in i.args.split()}
    assert exposed == {settings.port}, f"EXPOSE {exposed} must be GRADWIRE_PORT {settings.port}"
    assert set(_published_container_ports(service)) == exposed


def test_dockerfile_data_dir_owned_by_runtime_user(dockerfile: list[Instruction]) -> None:
    data_dir = _image_env(dockerfile)["GRADWIRE_DATA_DIR"]
    user = [i.args for i in dockerfile if i.keyword == "USER"][-1].split(":")[0]
    runs = " ".join(i.args for i in _all(dockerfile, "RUN"))
    assert re.search(rf"chown [^&;]*\b{re.escape(user)}\b[^&;]* {re.escape(data_dir)}\b", runs), f"chown {data_dir} to {user}"
    uid = re.search(rf"useradd [^&;]*--uid (\S+)[^&;]* {re.escape(user)}\b", runs)
    assert uid, f"create {user} with a fixed --uid"
    assert int(_substitute(uid.group(1), _args(dockerfile))) >= 1000, f"uid {uid.group(1)} for {user}"


def test_dockerignore_keeps_what_the_install_needs() -> None:
    patterns = [line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip() and not line.startswith("#")]
    for needed in ("pyproject.toml", "README.md", "client", "service"):
        assert not any(fnmatch.fnmatch(needed, p.lstrip("/")) for p in patterns), f".dockerignore drops {needed}"
    for dropped in (".git", ".venv"):
        assert dropped in patterns, f".dockerignore should drop {dropped}"


def test_dockerfile_swaps_in_onnxruntime_gpu_for_the_base_cuda(dockerfile: list[Instruction]) -> None:
    """The image serves on the GPU too: after the server extra, onnxruntime gives way to the
    onnxruntime-gpu built for the base image's CUDA (PyPI's builds: CUDA 12 up to 1.26, CUDA 13 from
    1.27), inside pyproject's range, and the build fails without its CUDA provider."""
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11+")
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    ort_req = next(Requirement(r) for r in pyproject["project"]["optional-dependencies"]["server"] if Requirement(r).name == "onnxruntime")
    runs = [i.args for i in _all(dockerfile, "RUN")]
    server_at = next(k for k, r in enumerate(runs) if "'.[server]'" in r)
    swap_at = next(k for k, r in enumerate(runs) if "onnxruntime-gpu" in r)
    assert swap_at > server_at, "swap onnxruntime after the server extra installed it"
    swap = runs[swap_at]
    assert re.search(r"pip uninstall (--yes|-y) onnxruntime\b", swap), "uninstall onnxruntime first: both ship the onnxruntime module"
    by_cuda = {m.group(1): Requirement(m.group(2)) for m in re.finditer(r"(\d+)\) ort_gpu='(onnxruntime-gpu[^']*)'", swap)}
    assert set(by_cuda) == {"12", "13"}, by_cuda
    assert by_cuda["12"].specifier.contains("1.26.0") and not by_cuda["12"].specifier.contains("1.27.0")
    assert by_cuda["13"].specifier.contains("1.27.0") and not by_cuda["13"].specifier.contains("1.26.0")
    for req in by_cuda.values():
        lowest = min((s.version for s in req.specifier if s.operator == ">="), default=None)
        assert lowest is not None and ort_req.specifier.contains(lowest), f"{req} reaches below pyproject's {ort_req}"
    assert '"$ort_gpu"' in swap and "CUDAExecutionProvider" in swap and "assert" in swap, "install it; fail the build without the CUDA provider"
    m = re.search(r"cuda(\d+)\.", _base_image(dockerfile))
    assert m and m.group(1) in by_cuda, f"the base image's CUDA has no onnxruntime-gpu here: {_base_image(dockerfile)}"
