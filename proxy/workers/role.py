"""What one worker process is: its index among the supervisor's workers, and its config."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from proxy.audit.trailset import worker_audit_dir
from proxy.config import Config


@dataclass(frozen=True, slots=True)
class WorkerRole:
    index: int  # 0 .. count-1
    count: int
    run_dir: Path  # the supervisor's private directory (mode 0700): sibling sockets
    audit_root: Path  # audit.dir as configured: worker 0's trail, the others' below it

    def socket_path(self, index: int) -> Path:
        return self.run_dir / f"worker-{index}.sock"

    @property
    def siblings(self) -> tuple[int, ...]:
        return tuple(i for i in range(self.count) if i != self.index)

    @property
    def leads(self) -> bool:
        """Worker 0 serves the one admin listener (and /metrics) and runs the one alert
        engine for all of them."""
        return self.index == 0


def worker_config(cfg: Config, role: WorkerRole) -> Config:
    """The configuration worker ``role`` runs with: its own audit directory (trail identity,
    chain); the admin listener and the alert rules only in worker 0."""
    changes: dict[str, object] = {"audit__dir": str(worker_audit_dir(role.audit_root, role.index))}
    if not role.leads:
        changes["admin__listen"] = ""
        changes["alerts"] = ()
    return cfg.replace(**changes)


@dataclass(frozen=True, slots=True)
class WorkerStart:
    role: WorkerRole
    config: Config


def worker_role(cfg: Config, index: int, run_dir: str | None) -> WorkerStart:
    """The role the supervisor's flags give this process, and the config it runs with."""
    from proxy.errors import ConfigError, SourceProblem

    count = int(cfg["workers"])
    if run_dir is None or not 0 <= index < count:
        raise ConfigError([SourceProblem(
            "", 0, 0, f"--worker-index {index} needs --run-dir and 0 <= index < workers ({count})",
            "workers",
        )])  # fmt: skip
    role = WorkerRole(index, count, Path(run_dir), Path(cfg["audit.dir"]))
    return WorkerStart(role, worker_config(cfg, role))
