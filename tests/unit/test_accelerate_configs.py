"""recipes/accelerate/*.yaml: every file loads with accelerate's own loader, every key reaches `accelerate launch`,
the plugins build from what the launcher exports, and the command lines in each header parse (and run, on CPU, for
the DDP ones: gloo, one machine and two simulated machines on localhost)."""
from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = ROOT / "recipes" / "accelerate"
CONFIGS = sorted(CONFIG_DIR.glob("*.yaml"))
# The file → the distributed_type it must declare. A new file needs a line here (and its own checks below).
EXPECTED_TYPE = {
    "ddp.yaml": "MULTI_GPU",
    "fsdp.yaml": "FSDP",
    "deepspeed-zero2.yaml": "DEEPSPEED",
    "multi-node.yaml": "MULTI_GPU",
}
# Nested sections of the config file → the `accelerate launch` argument group their keys become.
NESTED_GROUPS = {"fsdp_config": "FSDP Arguments", "deepspeed_config": "DeepSpeed Arguments"}


def header(path: Path) -> list[str]:
    """The leading comment block, without the '#'."""
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    return lines


def launch_commands(path: Path) -> list[list[str]]:
    """Each 'accelerate launch ...' line of the header, as the argv after 'accelerate launch'."""
    commands = []
    for line in header(path):
        if "accelerate launch" in line:
            argv = shlex.split(line[line.index("accelerate launch"):])
            commands.append(argv[2:])
    return commands


def launch_args(argv: list[str]):
    """What `accelerate launch ARGV` computes before spawning anything: the config merged into its arguments."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    args, defaults, mp_from_config = _validate_launch_command(launch_command_parser().parse_args(argv))
    if args.use_deepspeed:  # as launch_command() does before prepare_deepspeed_cmd_env()
        fields = list(defaults.deepspeed_config) + (["mixed_precision"] if mp_from_config else [])
        args.deepspeed_fields_from_accelerate_config = ",".join(fields)
    return args, defaults


def launcher_env(args, monkeypatch) -> dict[str, str]:
    """The environment the launcher gives each process (accelerate's own functions; nothing is started)."""
    import accelerate.utils.launch as launch_utils

    monkeypatch.setattr(launch_utils, "is_port_in_use", lambda port=None: False)  # CI may hold 29500
    if args.use_deepspeed:
        _, env = launch_utils.prepare_deepspeed_cmd_env(args)
    else:
        env = launch_utils.prepare_multi_gpu_env(args)
    return env


def use_env(env: dict[str, str], monkeypatch) -> None:
    """Only the launcher's ACCELERATE_*/FSDP_* variables, as a launched process would see them."""
    for key in list(os.environ):
        if key.startswith(("ACCELERATE_", "FSDP_")):
            monkeypatch.delenv(key)
    for key, value in env.items():
        if key.startswith(("ACCELERATE_", "FSDP_")):
            monkeypatch.setenv(key, value)


def test_the_expected_files_are_there():
    assert {p.name for p in CONFIGS} == set(EXPECTED_TYPE)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_loads_with_accelerate_and_declares_its_type(path):
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file

    config = load_config_from_file(str(path))  # unknown top-level keys raise ValueError here
    assert isinstance(config, ClusterConfig)
    assert config.distributed_type.value == EXPECTED_TYPE[path.name]
    assert config.compute_environment.value == "LOCAL_MACHINE"
    # afinar decides the precision from the recipe (train.precision); the launcher exports this as
    # ACCELERATE_MIXED_PRECISION, which only applies when the script does not pass its own.
    assert config.mixed_precision == "no"
    assert config.num_processes >= 2 and config.num_processes % config.num_machines == 0


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_nested_keys_are_launch_arguments(path):
    """The loader only checks top-level keys: `accelerate launch` copies fsdp_config/deepspeed_config keys onto its
    arguments and silently ignores the ones it does not know. So check them against its parser."""
    from accelerate.commands.launch import launch_command_parser

    groups = {g.title: {a.dest for a in g._group_actions} for g in launch_command_parser()._action_groups}
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    for section, group in NESTED_GROUPS.items():
        for key in raw.get(section) or {}:
            dest = "fsdp_" + key if section == "fsdp_config" and not key.startswith("fsdp") else key
            assert dest in groups[group], f"{path.name}: {section}.{key} no es un argumento de accelerate launch"
    others = {k for k, v in raw.items() if isinstance(v, dict)} - set(NESTED_GROUPS)
    assert not others, f"{path.name}: secciones sin comprobar: {others}"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_header_says_what_it_is_for_and_how_to_launch_it(path):
    from afinar.cli import parse_args

    text = "\n".join(header(path))
    assert f"accelerate launch --config_file recipes/accelerate/{path.name}" in text
    commands = launch_commands(path)
    assert commands and len(header(path)) > len(commands)  # at least one line that is not a command
    for argv in commands:
        args, _ = launch_args(argv)
        assert args.config_file == f"recipes/accelerate/{path.name}"
        assert args.module and args.training_script == "afinar"  # src/afinar/__main__.py
        afinar_args = parse_args(args.training_script_args)
        assert afinar_args.command == "train"
        assert (ROOT / afinar_args.recipe).is_file(), afinar_args.recipe


def test_ddp(monkeypatch):
    args, defaults = launch_args(launch_commands(CONFIG_DIR / "ddp.yaml")[0])
    assert args.multi_gpu and not args.use_fsdp and not args.use_deepspeed
    assert defaults.num_machines == 1 and args.num_processes == 2
    env = launcher_env(args, monkeypatch)
    assert args.nproc_per_node == "2"
    assert env["ACCELERATE_MIXED_PRECISION"] == "no"
    assert "ACCELERATE_USE_FSDP" not in env and "ACCELERATE_USE_DEEPSPEED" not in env


def test_fsdp2_plugin_builds_from_the_launcher_env(monkeypatch):
    from accelerate.utils import FullyShardedDataParallelPlugin
    from torch.distributed.fsdp import StateDictType
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    path = CONFIG_DIR / "fsdp.yaml"
    assert yaml.safe_load(path.read_text(encoding="utf-8"))["fsdp_config"]["fsdp_version"] == 2
    args, _ = launch_args(launch_commands(path)[0])
    assert args.use_fsdp and str(args.fsdp_version) == "2"
    env = launcher_env(args, monkeypatch)  # raises if cpu_ram_efficient_loading lacks sync_module_states
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_VERSION"] == "2"
    use_env(env, monkeypatch)
    plugin = FullyShardedDataParallelPlugin()  # what Accelerator() builds in each process; CPU is enough
    assert plugin.fsdp_version == 2
    assert plugin.reshard_after_forward is True
    assert plugin.auto_wrap_policy is transformer_auto_wrap_policy
    assert plugin.state_dict_type == StateDictType.FULL_STATE_DICT  # a LoRA adapter is small: whole on rank 0
    assert plugin.cpu_ram_efficient_loading is True
    assert type(plugin.cpu_offload).__name__ == "OffloadPolicy"  # FSDP2's "no offload" (CPUOffloadPolicy offloads)


def test_deepspeed_zero2_plugin_builds_and_leaves_accumulation_and_clipping_to_the_recipe(monkeypatch):
    from accelerate.utils import DeepSpeedPlugin

    path = CONFIG_DIR / "deepspeed-zero2.yaml"
    section = yaml.safe_load(path.read_text(encoding="utf-8"))["deepspeed_config"]
    assert section["zero_stage"] == 2
    # Written in the file, these become ACCELERATE_GRADIENT_ACCUMULATION_STEPS / _CLIPPING: the first overrides the
    # gradient_accumulation_steps that afinar passes to Accelerator() (and "auto" makes int() fail there).
    assert "gradient_accumulation_steps" not in section and "gradient_clipping" not in section
    args, _ = launch_args(launch_commands(path)[0])
    assert args.use_deepspeed
    env = launcher_env(args, monkeypatch)
    assert env["ACCELERATE_USE_DEEPSPEED"] == "true" and env["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == "2"
    assert "ACCELERATE_GRADIENT_ACCUMULATION_STEPS" not in env and "ACCELERATE_GRADIENT_CLIPPING" not in env
    use_env(env, monkeypatch)
    plugin = DeepSpeedPlugin()  # builds its DeepSpeed config dict; the deepspeed package is not needed for this
    assert plugin.zero_stage == 2
    assert plugin.deepspeed_config["zero_optimization"]["stage"] == 2
    assert plugin.offload_optimizer_device == "none" and plugin.offload_param_device == "none"
    # "auto" here is filled in by accelerator.prepare() from the Accelerator's own gradient_accumulation_steps.
    assert plugin.gradient_accumulation_steps == "auto"


def test_multi_node_one_command_per_machine(monkeypatch):
    path = CONFIG_DIR / "multi-node.yaml"
    first, second = launch_commands(path)
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert config["num_machines"] == 2 and config["machine_rank"] == 0
    assert config["rdzv_backend"] == "static" and config["same_network"] is True
    assert "CAMBIA" in path.read_text(encoding="utf-8")  # the placeholders are marked
    for argv, rank in ((first, 0), (second, 1)):
        args, _ = launch_args(argv)
        launcher_env(args, monkeypatch)
        assert (args.nnodes, args.node_rank, args.nproc_per_node) == ("2", rank, "2")
        assert args.main_process_ip == config["main_process_ip"] and args.main_process_port == 29500


# --- real launches on CPU (torchrun + gloo), with a tiny script instead of afinar's training --------------------

real_launch = pytest.mark.skipif(sys.platform == "win32",
                                 reason="los lanzamientos reales con torchrun se prueban en Linux y macOS")

PROBE = r"""
import os

import torch
from accelerate import Accelerator

accelerator = Accelerator(cpu=True)
total = accelerator.reduce(torch.tensor([accelerator.process_index + 1.0]), "sum")
line = (f"SONDA rank={accelerator.process_index} n={accelerator.num_processes} "
        f"type={accelerator.distributed_type.value} backend={accelerator.state.backend} total={total.item():g}\n")
os.write(1, line.encode())  # one write: the ranks share the launcher's stdout
accelerator.wait_for_everyone()
accelerator.end_training()  # destroys the process group: without it gloo may abort at exit ("terminate called ...")
"""


def cpu_env(tmp_path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "FSDP_"))}
    env.update(CUDA_VISIBLE_DEVICES="", PYTHONPATH=os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")]))
    if sys.platform.startswith("linux"):
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # gloo on loopback, whatever the host name resolves to
    return env


def accelerate_launch(argv: list[str], tmp_path) -> subprocess.Popen:
    """`accelerate launch ARGV` from this interpreter, in its own process group (so a hang can be cleaned up)."""
    cli = [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch"]
    return subprocess.Popen(cli + argv, cwd=ROOT, env=cpu_env(tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def finish(procs: list[subprocess.Popen], timeout: float = 180) -> list[str]:
    """Each launcher's output; on a timeout, its whole process group (launcher and workers) is killed."""
    try:
        return [proc.communicate(timeout=timeout)[0] for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def probe_lines(output: str) -> list[str]:
    return sorted(re.findall(r"SONDA rank=\d+ n=\d+ type=\w+ backend=\w+ total=\d+", output))


@real_launch
def test_ddp_runs_on_cpu_with_gloo_and_the_module_form(tmp_path):
    (tmp_path / "sonda_afinar.py").write_text(PROBE, encoding="utf-8")
    argv = launch_commands(CONFIG_DIR / "ddp.yaml")[0]
    argv = argv[: argv.index("-m")] + ["--main_process_port", str(free_port()), "-m", "sonda_afinar"]
    proc = accelerate_launch(argv, tmp_path)
    (out,) = finish([proc])
    assert proc.returncode == 0, out
    assert probe_lines(out) == [f"SONDA rank={r} n=2 type=MULTI_CPU backend=gloo total=3" for r in (0, 1)], out

    # and afinar's own entry point runs as a module under the launcher (once per process)
    argv = launch_commands(CONFIG_DIR / "ddp.yaml")[0]
    argv = argv[: argv.index("-m")] + ["--main_process_port", str(free_port()), "-m", "afinar", "--version"]
    proc = accelerate_launch(argv, tmp_path)
    (out,) = finish([proc])
    assert proc.returncode == 0, out
    assert len(re.findall(r"^afinar \d", out, flags=re.M)) == 2, out


@real_launch
def test_multi_node_runs_as_two_machines_on_localhost(tmp_path):
    (tmp_path / "sonda_afinar.py").write_text(PROBE, encoding="utf-8")
    port = str(free_port())
    procs = []
    for argv in launch_commands(CONFIG_DIR / "multi-node.yaml"):  # machine 0, then machine 1
        argv = argv[: argv.index("-m")] + ["--num_processes", "2", "--main_process_ip", "127.0.0.1",
                                           "--main_process_port", port, "-m", "sonda_afinar"]
        procs.append(accelerate_launch(argv, tmp_path))
    outs = finish(procs)
    assert [p.returncode for p in procs] == [0, 0], outs
    assert probe_lines(outs[0]) == ["SONDA rank=0 n=2 type=MULTI_CPU backend=gloo total=3"], outs
    assert probe_lines(outs[1]) == ["SONDA rank=1 n=2 type=MULTI_CPU backend=gloo total=3"], outs
