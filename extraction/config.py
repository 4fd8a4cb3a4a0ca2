"""The LLM configuration: a litellm `model_list` plus routing per task, read from YAML.

Re-routing a task (another model, more retries, a new fallback) is a change of this file, not of code.
See `docs/llm-config.example.yaml` for a commented example. With no file, the built-in offline model
serves every task.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

log = logging.getLogger(__name__)

Task = Literal["classify", "extract", "verify"]
TASKS: tuple[Task, ...] = ("classify", "extract", "verify")

OFFLINE_ALIAS = "offline"
OFFLINE_MODEL = "reviewapp/heuristic-v1"


class ConfigError(ValueError):
    """The LLM config file is missing, unreadable or invalid."""


class ModelEntry(BaseModel):
    """One litellm Router deployment."""

    model_config = ConfigDict(extra="allow")

    model_name: str  # the alias tasks refer to
    litellm_params: dict[str, Any]
    model_info: dict[str, Any] = Field(default_factory=dict)

    @property
    def model(self) -> str:
        return str(self.litellm_params.get("model", ""))


class TaskRoute(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str
    fallbacks: list[str] = Field(default_factory=list)
    retries: int = Field(default=2, ge=0, le=10)
    timeout: float = Field(default=60.0, gt=0)
    max_output_tokens: int | None = Field(default=None, gt=0)
    temperature: float | None = 0.0
    stream: bool = False

    @property
    def aliases(self) -> list[str]:
        return [self.model, *[f for f in self.fallbacks if f != self.model]]


class BreakerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    failure_threshold: int = Field(default=5, ge=1)
    cooldown_seconds: float = Field(default=30.0, gt=0)
    # How long a worker trusts a "closed, no failures" state before asking the shared store again.
    local_cache_seconds: float = Field(default=1.0, ge=0)


class GatewaySettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    backoff_base_seconds: float = Field(default=0.5, ge=0)
    backoff_max_seconds: float = Field(default=20.0, ge=0)
    breaker: BreakerSettings = Field(default_factory=BreakerSettings)
    near_limit_ratio: float = Field(default=0.9, gt=0, le=1)  # flag calls above 90 % of a limit
    chunk_overlap_tokens: int = Field(default=200, ge=0)
    default_max_input_tokens: int = Field(default=8192, gt=0)  # for models litellm does not know
    default_max_output_tokens: int = Field(default=2048, gt=0)


class LLMConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_list: list[ModelEntry]
    tasks: dict[str, TaskRoute]
    environments: dict[str, dict[str, TaskRoute]] = Field(default_factory=dict)
    settings: GatewaySettings = Field(default_factory=GatewaySettings)

    @model_validator(mode="after")
    def _check_references(self) -> LLMConfig:
        aliases = {m.model_name for m in self.model_list}
        missing_tasks = [t for t in TASKS if t not in self.tasks]
        if missing_tasks:
            raise ValueError(f"tasks must define {', '.join(missing_tasks)}")
        routes = [*self.tasks.items()] + [
            (f"{env}.{t}", r) for env, m in self.environments.items() for t, r in m.items()
        ]
        for where, route in routes:
            for alias in route.aliases:
                if alias not in aliases:
                    raise ValueError(f"{where} refers to model {alias!r}, which is not in model_list")
        return self

    def route(self, task: str, environment: str = "default") -> TaskRoute:
        """Return the route of `task` in `environment`, falling back to the default routes."""
        return self.environments.get(environment, {}).get(task) or self.tasks[task]

    def entry(self, alias: str) -> ModelEntry:
        return next(m for m in self.model_list if m.model_name == alias)

    def aliases(self) -> list[str]:
        return sorted({m.model_name for m in self.model_list})


def default_config() -> LLMConfig:
    """Return the embedded default: every task served by the built-in offline model."""
    route = TaskRoute(model=OFFLINE_ALIAS, retries=0, timeout=30)
    return LLMConfig(
        model_list=[
            ModelEntry(
                model_name=OFFLINE_ALIAS,
                litellm_params={"model": OFFLINE_MODEL},
                model_info={"max_input_tokens": 200_000, "max_output_tokens": 16_000, "pinned": True},
            )
        ],
        tasks={t: route for t in TASKS},
    )


def load_config(path: str | os.PathLike[str] | None) -> LLMConfig:
    """Load and validate the YAML config at `path`; an empty path means the embedded default."""
    if not path:
        return default_config()
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read LLM config {p}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"LLM config {p} is not valid YAML: {exc}") from exc
    try:
        return LLMConfig.model_validate(data or {})
    except ValidationError as exc:
        raise ConfigError(f"LLM config {p} is invalid:\n{exc}") from exc


# A dated or numbered suffix pins a provider model to a fixed snapshot (gpt-4o-2024-08-06,
# claude-3-5-sonnet-20241022, llama-3.1-8b-instruct@v1). Floating names silently change behaviour.
_PINNED = re.compile(r"(\d{4}-\d{2}-\d{2}|\d{8}|@[\w.-]+|-\d{3,4}$|:\w*\d[\w.-]*$|-v\d+(\.\d+)*$)")


def is_pinned(entry: ModelEntry) -> bool:
    """Return whether the deployment names a fixed model version (or says so with model_info.pinned)."""
    if entry.model_info.get("pinned") is True:
        return True
    name = entry.model.split("/", 1)[-1]
    return bool(_PINNED.search(name))


def floating_models(config: LLMConfig) -> list[ModelEntry]:
    """Return the deployments whose model name floats (e.g. `gpt-4o` instead of a dated version)."""
    return [m for m in config.model_list if not is_pinned(m)]
