"""The config's settings as typed, frozen values, parsed once at the boundary (the Snakefile,
a job's params, a direct call) from the schema-validated config: code past it reads fields,
not dict keys. Defaults live in the schema only (:mod:`clipbench.schema`); the model entries
are :class:`clipbench.kinds.base.ModelSpec` values, one class per model kind.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from clipbench.schema import frozen, with_defaults

if TYPE_CHECKING:
    from clipbench.kinds.base import ModelSpec


def _section(cls, value: Mapping[str, Any] | None, *path: str):
    entry = with_defaults(value or {}, ("properties", *path), f"config {'.'.join(path)}")
    return cls(**{key: frozen(value) for key, value in entry.items()})


@dataclass(frozen=True)
class RetrySettings:
    """Config `download`: hub fetches are tried ``attempts`` times, waiting ``wait_seconds``
    and then twice as long each time."""

    attempts: int
    wait_seconds: float

    @classmethod
    def parse(cls, section: Mapping[str, Any] | None) -> RetrySettings:
        return _section(cls, section, "download")


ONE_ATTEMPT = RetrySettings(attempts=1, wait_seconds=0)  # direct calls: no retry


@dataclass(frozen=True)
class EncodeSettings:
    """Config `encode`: where and how the models run (see the schema for each value)."""

    device: str  # auto | cpu | cuda[:n]
    precision: str  # auto | fp32 | fp32-strict | bf16 | fp16
    batch_size: int | str  # items per forward pass, or "auto" (clipbench.batching)
    threads: int  # the job's CPU threads (capped by the CPUs it may use)
    decode_workers: int  # threads decoding images ahead of the model

    @classmethod
    def parse(cls, section: Mapping[str, Any] | None) -> EncodeSettings:
        return _section(cls, section, "encode")


@dataclass(frozen=True)
class BootstrapSettings:
    """Config `retrieval.bootstrap`: the resampling behind every interval and paired test."""

    resamples: int
    seed: int
    level: float  # of the intervals; 1 − level is the tests' alpha

    @classmethod
    def parse(cls, section: Mapping[str, Any] | None) -> BootstrapSettings:
        return _section(cls, section, "retrieval", "properties", "bootstrap")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RobustnessSettings:
    """Config `robustness`: retrieval under seeded image noise and caption typos."""

    enabled: bool
    datasets: tuple[str, ...] | None  # None: every dataset
    noise_sigmas: tuple[float, ...]  # of the [0, 1] pixel range
    typo_rates: tuple[float, ...]  # per character
    seed: int

    @classmethod
    def parse(cls, section: Mapping[str, Any] | None) -> RobustnessSettings:
        return _section(cls, section, "robustness")

    def runs_on(self, dataset: str) -> bool:
        return self.enabled and (self.datasets is None or dataset in self.datasets)

    def perturbations_param(self) -> str:
        """What decides a robustness job's result: the levels and the seed, not which datasets
        run (adding one must not rerun the others)."""
        levels = {"noise_sigmas": self.noise_sigmas, "typo_rates": self.typo_rates}
        return json.dumps(levels | {"seed": self.seed}, sort_keys=True)

    @classmethod
    def from_param(cls, param: str) -> RobustnessSettings:
        return cls.parse(json.loads(param) | {"enabled": True})


@dataclass(frozen=True)
class Settings:
    """The typed part of a validated config: every model's spec and the sections above."""

    models: Mapping[str, ModelSpec]
    encode: EncodeSettings
    download: RetrySettings
    bootstrap: BootstrapSettings
    robustness: RobustnessSettings

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Settings:
        from clipbench.kinds import parse_model

        return cls(
            models={name: parse_model(entry, name) for name, entry in config["models"].items()},
            encode=EncodeSettings.parse(config.get("encode")),
            download=RetrySettings.parse(config.get("download")),
            bootstrap=BootstrapSettings.parse(config.get("retrieval", {}).get("bootstrap")),
            robustness=RobustnessSettings.parse(config.get("robustness")),
        )
