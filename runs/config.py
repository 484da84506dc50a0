"""A run's configuration: one pydantic model for the YAML file and the command-line flags.

Flags override the file; the resolved model (with the target latency and table path filled in) is saved as
the run dir's `config.yaml`, so `--resume DIR` continues exactly the search that was started.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

import search_space as ss
from evaluators import Recipe, RecipeError
from evaluators.trainer import DEFAULT_STEPS
from search_space.host import usable_cpus
from searchers import OPTIONS, PARETO_STRATEGIES, REWARD_PRESETS, STRATEGIES


class ConfigError(ValueError):
    """A bad key or value in a run config; the message names it."""


# Settings a resumed run may change; everything else defines the search and is fixed once it started.
PIPELINE_KEYS = ("exports", "netadapt")  # what `bneck run` does after the search (runs.pipeline)
RESUMABLE = ("trials", "workers", "threads", "backend", "address", "keep_weights", "progress", "confirm")


class ConfirmConfig(BaseModel):
    """After the budget: the top `top` trials and the reference trained `seeds` more times (runs.confirm)."""

    model_config = ConfigDict(extra="forbid")
    top: int = Field(3, ge=1, le=100, description="trials re-trained besides the reference")
    seeds: int = Field(2, ge=0, le=20, description="extra training seeds per trial (0: off)")


class SupernetEvalConfig(BaseModel):
    """`evaluator: supernet`: score candidates on a trained supernet (`bneck supernet train`) instead of training
    each one; confirmation then trains the best standalone."""

    model_config = ConfigDict(extra="forbid")
    checkpoint: Path = Field(description="the supernet: its OUT dir or OUT/supernet.pt")
    calib_images: int = Field(256, ge=1, description="training images that recalibrate each subnet's BN")
    val_images: int | None = Field(None, ge=1, description="validation images scored (default: all)")

    @field_validator("checkpoint")
    @classmethod
    def _exists(cls, v: Path) -> Path:
        if not v.exists():
            raise ValueError(f"supernet checkpoint {v} does not exist (train it with `bneck supernet train`)")
        return v.resolve()


class RunConfig(BaseModel):
    """Everything that defines a search run. Field docs are what `bneck search --help` and errors refer to."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    name: str = Field("search", pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="run name (run dir prefix)")
    space: str = Field("mobilenet_v3_small_space", description="search space: a name or a space .json file")
    width_mult: float = Field(1.0, gt=0, le=4)
    data: str = Field("builtin:digits", description="builtin:digits, an image folder or a .npz")
    resolution: int = Field(32, ge=32, le=1024, description="proxy-training resolution (px)")
    steps: int | None = Field(None, ge=1, description="proxy-training optimizer steps per candidate "
                              f"(default {DEFAULT_STEPS} when epochs is not given either)")
    epochs: float | None = Field(None, gt=0, description="proxy-training budget in epochs instead of steps")
    recipe: dict[str, Any] = Field(default_factory=dict, description="other training-recipe fields")
    device: str = Field("cpu", pattern=r"^(cpu|cuda(:\d+)?)$")
    eval_cache: bool = Field(True, description="reuse cached evaluations (~/.cache/bneck/evals)")
    evaluator: Literal["train", "supernet"] = Field("train", description="train: proxy-train every candidate; "
                                                    "supernet: score it on a trained supernet (see `supernet`)")
    supernet: SupernetEvalConfig | None = Field(None, description="evaluator supernet: the checkpoint and scoring")
    table: Path | None = Field(None, description="latency table (default: this device's cached table)")
    build_table: bool = Field(True, description="build the table first when it is missing")
    latency_resolution: int = Field(224, ge=32, le=2048, description="resolution the latency is predicted at")
    latency_threads: int = Field(1, ge=1, le=256)
    target_ms: float | None = Field(None, gt=0, description="reward target (default: the space's preset)")
    reward: str = Field("mobilenet_v3", description="reward preset: mnasnet | mobilenet_v3 | hard | tunas")
    alpha: float | None = Field(None, le=0, description="reward exponent at or under the target")
    beta: float | None = Field(None, le=0, description="reward exponent over the target")
    mode: Literal["reward", "pareto"] = "reward"
    max_latency_ms: float | None = Field(None, gt=0, description="hard ceiling: slower nets are not trained")
    searcher: str = Field("tpe", description="search strategy")
    searcher_options: dict[str, Any] = Field(default_factory=dict)
    trials: int = Field(20, ge=1, le=1_000_000, description="budget of finished trials")
    enqueue_preset: bool = Field(True, description="evaluate the space's preset first, as the reference point")
    workers: int = Field(1, ge=1, le=4096, description="trials evaluated at once")
    threads: int | None = Field(None, ge=1, le=256, description="torch threads per trial (default: cores/workers)")
    backend: Literal["local", "ray"] = "local"
    address: str | None = Field(None, description="Ray cluster: auto or HOST:PORT (default: start one)")
    storage: str | None = Field(None, description="Optuna storage URL (default: sqlite in the run dir); a password "
                                "in it is used but never saved or printed")
    study: str | None = Field(None, pattern=r"^[A-Za-z0-9_.:-]{1,128}$",
                              description="Optuna study name (default: the run dir's name and a random suffix); a "
                                          "new run whose study exists in the storage is refused")
    seed: int = Field(0, ge=0, description="seeds the searcher and every training run")
    keep_weights: int = Field(5, ge=0, description="trained weights kept for the best N trials")
    confirm: ConfirmConfig | None = Field(default_factory=ConfirmConfig,
                                          description="re-train the best trials and the reference with more seeds; "
                                                      "the best by mean (null: off)")
    progress: bool = Field(True, description="live progress table")

    @field_validator("space")
    @classmethod
    def _known_space(cls, v: str) -> str:
        if v in ss.SPACES:
            return v
        if v.endswith(".json"):
            if not Path(v).is_file():
                raise ValueError(f"space file {v} does not exist")
            return str(Path(v).resolve())
        raise ValueError(f"unknown space {v!r} (known: {', '.join(ss.SPACES)}, or a .json space definition)")

    @field_validator("reward")
    @classmethod
    def _known_reward(cls, v: str) -> str:
        if v not in REWARD_PRESETS:
            raise ValueError(f"unknown reward preset {v!r} (known: {', '.join(REWARD_PRESETS)})")
        return v

    @field_validator("searcher")
    @classmethod
    def _known_searcher(cls, v: str) -> str:
        if v not in STRATEGIES:
            raise ValueError(f"unknown searcher {v!r} (known: {', '.join(STRATEGIES)})")
        return v

    @field_validator("storage")
    @classmethod
    def _storage_url(cls, v: str | None) -> str | None:
        if v is not None and "://" not in v:
            raise ValueError(f"{v!r} is not a database URL (e.g. sqlite:///study.db, postgresql+psycopg://...)")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        unknown = sorted(set(self.searcher_options) - set(OPTIONS[self.searcher]))
        if unknown:
            raise ValueError(f"searcher_options: {unknown[0]!r} is not an option of {self.searcher} "
                             f"(allowed: {', '.join(OPTIONS[self.searcher]) or 'none'})")
        if self.mode == "pareto" and self.searcher not in PARETO_STRATEGIES:
            raise ValueError(f"searcher: {self.searcher} optimizes the reward; mode pareto takes "
                             f"{', '.join(PARETO_STRATEGIES)}")
        if self.address is not None and self.backend != "ray":
            raise ValueError("address: only meaningful with backend ray")
        if self.evaluator == "supernet" and self.supernet is None:
            raise ValueError("evaluator supernet needs supernet: {checkpoint: DIR} (a `bneck supernet train` output)")
        if self.evaluator != "supernet" and self.supernet is not None:
            raise ValueError("supernet: only meaningful with evaluator supernet")
        try:
            self.training_recipe()
        except (RecipeError, TypeError) as exc:
            raise ValueError(f"recipe: {exc}") from None
        return self

    def training_recipe(self) -> Recipe:
        """The proxy-training recipe of every candidate (threads per worker filled in)."""
        own = {"steps", "epochs", "threads"}  # top-level keys of the config
        unknown = sorted(set(self.recipe) - set(Recipe.__dataclass_fields__) | (set(self.recipe) & own))
        if unknown:
            known = ", ".join(sorted(set(Recipe.__dataclass_fields__) - own))
            where = " (it is a top-level key)" if unknown[0] in own else ""
            raise RecipeError(f"unknown field {unknown[0]!r}{where} (known: {known})")
        return Recipe(**{**self.recipe, "steps": self.steps, "epochs": self.epochs, "threads": self.worker_threads()})

    def worker_threads(self) -> int:
        if self.threads is not None:
            return self.threads
        if self.backend == "ray":
            return 1
        return max(1, usable_cpus() // self.workers)

    def to_yaml(self) -> str:
        """The config as saved in a run dir: complete, with the storage password redacted."""
        doc = self.model_dump(mode="json")
        doc["storage"] = redact_url(doc["storage"])
        return yaml.safe_dump(doc, sort_keys=False)


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        return f"unknown key {loc!r} (known: {', '.join(RunConfig.model_fields)})"
    if not loc:  # a model-level check already names its field
        return msg
    if err["type"] == "value_error":  # our validators name the bad value themselves
        return f"{loc}: {msg}"
    return f"{loc}: {msg} (got {err.get('input')!r})"


def read_yaml(path: Path) -> dict[str, Any]:
    """The mapping in a YAML config file; errors name the file."""
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"config {path}: cannot read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config {path}{where}: not valid YAML") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ConfigError(f"config {path}: expected a mapping of keys to values, got {type(doc).__name__}")
    return doc


def load_config(path: Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """File values, then the given overrides (None values are 'not given'), validated as one model."""
    values = read_yaml(path) if path is not None else {}
    for key in PIPELINE_KEYS:  # a `bneck run` pipeline file is also a valid search config
        values.pop(key, None)
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    where = f"config {path}: " if path is not None else ""
    try:
        return RunConfig.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(where + _first_error(exc)) from None


def redact_url(url: str | None) -> str | None:
    """`url` with its password replaced by ***: what is saved, printed and written to run.json."""
    if url is None or "@" not in url:
        return url
    try:
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
    except Exception:  # not parseable as a database URL: keep only the scheme and the part after the host's @
        scheme, _, rest = url.partition("://")
        return f"{scheme}://***@{rest.rpartition('@')[2]}"
    return parsed.render_as_string(hide_password=True) if parsed.password else url


def without_password(url: str | None) -> str | None:
    """A saved (redacted) URL made usable again: no password, so that the driver reads it from PGPASSWORD or
    ~/.pgpass (libpq) unless the user passes the URL again with `--storage`."""
    if url is None or ":***@" not in url:
        return url
    return url.replace(":***@", "@", 1)


# Fields a saved config may lack because older versions did not write them; every other field must be there.
ADDED_FIELDS = ("steps", "study", "confirm")
LEGACY_STUDY = "bneck"  # the one study name of runs started before study names were per run


def load_saved_config(path: Path) -> RunConfig:
    """A run dir's config.yaml, which must be complete: an empty or cut-short file (a kill or a full disk while
    it was written by an older version) would otherwise read as "all defaults" and resume another search."""
    values = read_yaml(path)
    missing = [k for k in RunConfig.model_fields if k not in values and k not in ADDED_FIELDS]
    if missing:
        what = "empty" if not values else f"incomplete (no {', '.join(missing[:3])}" + (
            f" and {len(missing) - 3} more)" if len(missing) > 3 else ")")
        raise ConfigError(f"config {path} is {what}: it was not written completely, so the run cannot be resumed "
                          "as it was started; start a new run")
    if "study" not in values:
        values["study"] = LEGACY_STUDY
    try:
        return RunConfig.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(f"config {path}: " + _first_error(exc)) from None


def resume_config(saved: RunConfig, overrides: dict[str, Any]) -> RunConfig:
    """The saved config of a run with the few settings a resume may change. `--storage` may be given again to
    supply the password that was not saved: it must be the saved URL apart from the password."""
    given = {k: v for k, v in overrides.items() if v is not None}
    if "storage" in given:
        if redact_url(given["storage"]) != redact_url(saved.storage):
            raise ConfigError(f"storage: cannot change on resume (the run was started with {saved.storage!r})")
    elif saved.storage is not None:
        given["storage"] = without_password(saved.storage)
    for key, value in given.items():
        if key == "storage":
            continue
        if key not in RESUMABLE and getattr(saved, key, None) != value:
            raise ConfigError(f"{key}: cannot change on resume (the run was started with {getattr(saved, key)!r}; "
                              f"resumable: {', '.join(RESUMABLE)})")
    try:
        return RunConfig.model_validate({**saved.model_dump(), **given})
    except ValidationError as exc:
        raise ConfigError(_first_error(exc)) from None


def default_run_dir(config: RunConfig, root: Path) -> Path:
    return root / f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"
