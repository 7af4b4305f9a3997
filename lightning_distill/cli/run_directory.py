"""Where a ``vdistill`` model command writes: a run directory of its own, so no run overwrites another's results.

Every ``fit``/``validate``/``test``/``predict``/``profile`` writes all its files (resolved ``config.yaml``,
checkpoints, logs, W&B offline run, metrics JSON, predictions CSV) into one directory:

* ``--run_dir DIR``: that directory. It must be new or empty unless ``--overwrite true``.
* otherwise ``<runs_root>/<run_name>/<command>_<n>``, n one more than the highest there (``fit_0``, ``fit_1``,
  ..., ``test_0``); ``runs_root`` is ``runs`` (the tiny family configs say ``runs/tiny``), ``run_name`` comes from
  the config or from the model: role, encoder family and k (``teacher_hrnn``, ``student_hrnn_k6``).
* a ``fit`` resumed from a checkpoint of a run (``--ckpt_path runs/x/fit_2/checkpoints/last.ckpt``) continues in
  that run's directory.

After a finished fit, ``<runs_root>/<run_name>/latest`` points at its directory. A Serial student whose config
names no teacher gets ``<runs_root>/teacher_<family>/latest/checkpoints/best.ckpt`` (``teacher_checkpoint``): the
newest teacher of its family, without any earlier teacher's checkpoint having been replaced.

Distributed runs: the process that parses the command line first (global rank 0) chooses and creates the
directory and hands it to the processes Lightning launches through ``VDISTILL_RUN_DIR``. Under an external
launcher (torchrun, srun) the other ranks start on their own; they create nothing, and every path they write
to comes from rank 0 (Lightning broadcasts the checkpoint directory, the prediction writer its file).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from lightning_distill.errors import ConfigError

RUNS_ROOT = "runs"
LATEST = "latest"
RUN_DIR_ENV = "VDISTILL_RUN_DIR"
# Module class -> role in a run's default name; a TeacherModule seeing k frames is a baseline.
_ROLES = {
    "TeacherModule": "teacher",
    "StudentModule": "student",
    "DistillModule": "parallel",
    "EarlyExitModule": "early_exit",
}


def choose_run_directory(
    command: str,
    *,
    runs_root: str,
    run_name: str,
    run_dir: str | None,
    overwrite: bool,
    ckpt_path: str | None,
    rank_zero: bool,
) -> Path:
    """The directory this command writes into, created on rank zero (``RUN_DIR_ENV``, when set, is the answer).

    Args:
        command: the subcommand, e.g. "fit".
        runs_root: the folder of every run name's folder.
        run_name: the <runs_root>/<run_name> folder of automatically numbered runs.
        run_dir: an explicit directory, or None.
        overwrite: allow an explicit ``run_dir`` that already holds files.
        ckpt_path: the command's checkpoint; a fit resumed from a run's checkpoint continues in that run.
        rank_zero: whether this process chooses (global rank 0); other ranks only compute the path.

    Raises:
        ConfigError: an explicit ``run_dir`` already holds a run and ``overwrite`` is not set.
    """
    handed = os.environ.get(RUN_DIR_ENV)
    if handed:
        return Path(handed)
    resumed = _run_of(ckpt_path) if command == "fit" else None
    if resumed is not None:
        path = resumed
    elif run_dir is not None:
        path = Path(run_dir)
        if rank_zero and not overwrite and path.is_dir() and any(path.iterdir()):
            raise ConfigError(
                f"run_dir {path} already holds files of another run: pass --overwrite true to write over them, or "
                "choose another --run_dir (or none: runs/<run_name>/<command>_<n> is new every time)"
            )
    else:
        path = _next_numbered(Path(runs_root) / run_name, command, create=rank_zero)
    if rank_zero:
        path.mkdir(parents=True, exist_ok=True)
    return path


def default_run_name(model: Any) -> str:
    """``<role>_<family>[_k<k>]`` from the parsed ``model`` config, e.g. ``teacher_hrnn``, ``student_netvlad_k6``."""
    class_name = str(_get(model, "class_path") or "model").rsplit(".", 1)[-1]
    init_args = _get(model, "init_args")
    k = _get(_get(_get(init_args, "sampler"), "init_args"), "k")
    role = _ROLES.get(class_name, class_name.lower())
    if role == "teacher" and k is not None:
        role = "baseline"
    return "_".join(part for part in (role, family_of(model), f"k{k}" if k is not None else "") if part)


def family_of(model: Any) -> str:
    """The encoder family's key (``VideoEncoder.registry``) of a parsed ``model`` config, else its class's name."""
    from lightning_distill.models.encoder import VideoEncoder  # the registry fills as the models are imported

    path = str(_get(_get(_get(model, "init_args"), "encoder"), "class_path") or "")
    name = path.rsplit(".", 1)[-1]
    return next((key for key, cls in VideoEncoder.registry.items() if cls.__name__ == name), name.lower())


def default_teacher_checkpoint(runs_root: str, model: Any) -> Path:
    """Where the newest teacher of the model's family is: what a Serial student distils from by default."""
    return Path(runs_root) / f"teacher_{family_of(model)}" / LATEST / "checkpoints" / "best.ckpt"


def link_latest(run: Path) -> Path | None:
    """Point ``<run's parent>/latest`` at ``run`` when it is a numbered fit (``fit_<n>``); returns the link."""
    if not re.fullmatch(r"fit_\d+", run.name):
        return None
    link = run.parent / LATEST
    tmp = run.parent / f".{LATEST}.tmp-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(run.name, target_is_directory=True)
    os.replace(tmp, link)  # atomic: a reader sees the old run or the new one
    return link


def _next_numbered(parent: Path, command: str, *, create: bool) -> Path:
    """``parent/<command>_<n>`` for the first n above every existing one, claimed with an exclusive mkdir."""
    pattern = re.compile(rf"{re.escape(command)}_(\d+)")
    while True:
        taken = [int(m.group(1)) for p in parent.glob(f"{command}_*") if (m := pattern.fullmatch(p.name))]
        path = parent / f"{command}_{max(taken, default=-1) + 1}"
        if not create:
            return path
        parent.mkdir(parents=True, exist_ok=True)
        try:
            path.mkdir()  # exclusive: two commands starting at once never share a directory
            return path
        except FileExistsError:
            continue


def _run_of(ckpt_path: str | None) -> Path | None:
    """The run directory a checkpoint was written into (``<run>/checkpoints/<file>`` beside ``<run>/config.yaml``)."""
    if not ckpt_path:
        return None
    checkpoint = Path(ckpt_path)
    run = checkpoint.parent.parent
    if checkpoint.parent.name == "checkpoints" and (run / "config.yaml").is_file():
        return run
    return None


def _get(section: Any, key: str) -> Any:
    """``section[key]`` of a dict or jsonargparse Namespace, None when absent."""
    if section is None:
        return None
    if isinstance(section, dict):
        return section.get(key)
    return getattr(section, key, None)
