"""The one configuration model.

Sources, lowest first: defaults, a YAML file (``--config``), ``FRAUDPIPE_*`` environment
variables (nested with ``__``, e.g. ``FRAUDPIPE_QUEUE__LEASE_S=20``), then CLI flags.
Invalid input raises :class:`ConfigError`, whose message names the field, the value and what
was expected; the CLI turns it into exit code 2.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import ipaddress
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    WithJsonSchema,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

STAGES = ("gather", "preprocess", "train", "infer")
Stage = Literal["gather", "preprocess", "train", "infer"]
Device = Literal["cpu", "gpu"]


class ConfigError(Exception):
    """A configuration value is invalid; the message is meant for the operator."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class QueueSettings(_Section):
    lease_s: float = Field(30.0, gt=0, description="Seconds a claim stays valid without renewal.")
    max_attempts: int = Field(
        3,
        ge=1,
        description="Failed attempts (the stage raised an error on the batch) before a batch "
        "moves to dead letters.",
    )
    max_lost_leases: int = Field(
        10,
        ge=1,
        description="Leases lost (the holder was killed, stopped or cut off before finishing) "
        "before a batch moves to dead letters as one that kills its workers.",
    )
    max_backlog: int = Field(
        64, ge=1, description="Pending batches in an output topic above which producers wait."
    )
    retention_s: float = Field(
        600.0, ge=0, description="Seconds acknowledged batches are kept in done/ before deletion."
    )
    results_hold_s: float = Field(
        5.0,
        ge=0,
        description="Seconds a scored batch stays in queue/inference-results before it moves "
        "to results/ (its durable, date-partitioned home).",
    )
    results_retention_days: int = Field(
        30,
        ge=1,
        description="Date partitions of results/ not written to for this many wall-clock "
        "days are deleted (a disk policy: event dates of a fast stream do not count).",
    )
    poll_min_s: float = Field(0.01, gt=0, description="Shortest idle poll interval.")
    poll_max_s: float = Field(0.5, gt=0, description="Longest idle poll interval (backoff cap).")
    watch: Literal["auto", "on", "off"] = Field(
        "auto",
        description="inotify wake-up via watchdog: auto = on for local filesystems, off on NFS.",
    )
    fsync: bool = Field(True, description="fsync files and directories on publish.")

    @model_validator(mode="after")
    def _poll_order(self) -> QueueSettings:
        if self.poll_min_s > self.poll_max_s:
            raise ValueError(
                f"poll_min_s ({self.poll_min_s}) must not exceed poll_max_s ({self.poll_max_s})"
            )
        return self


FraudScenario = Literal[1, 2, 3]
FRAUD_SCENARIOS: tuple[FraudScenario, ...] = (1, 2, 3)


class SimulatorSettings(_Section):
    seed: int = Field(42, description="Seed: the same seed gives the same transactions.")
    n_customers: int = Field(5000, ge=1)
    n_terminals: int = Field(10000, ge=1)
    radius: float = Field(5.0, gt=0, description="A customer uses terminals within this radius.")
    start_date: dt.date = Field(dt.date(2018, 4, 1), description="First simulated day (UTC).")
    large_amount_threshold: float = Field(
        220.0, gt=0, description="Scenario 1: amounts above this are fraud."
    )
    compromised_terminals_per_day: int = Field(2, ge=0, description="Scenario 2.")
    terminal_compromise_days: int = Field(28, ge=1, description="Scenario 2.")
    compromised_customers_per_day: int = Field(3, ge=0, description="Scenario 3.")
    customer_compromise_days: int = Field(14, ge=1, description="Scenario 3.")
    compromised_customer_fraction: float = Field(
        1 / 3, ge=0, le=1, description="Scenario 3: share of a compromised card's transactions."
    )
    compromised_amount_factor: float = Field(5.0, gt=0, description="Scenario 3: amount x this.")
    scenarios: list[FraudScenario] = Field(
        default_factory=lambda: list(FRAUD_SCENARIOS),
        description="Fraud scenarios that are on: 1 large amounts, 2 compromised terminals, "
        "3 compromised customers. A scenario that is off leaves its transactions genuine "
        "(scenario 3 off: no amount is multiplied). [] : no fraud at all.",
    )
    amount_overlap: float = Field(
        0.0,
        ge=0,
        le=1,
        description="How far fraud amounts overlap genuine ones. 0: the handbook (scenario 1 "
        "is every amount above large_amount_threshold, scenario 3 multiplies by "
        "compromised_amount_factor). o > 0: scenario 1 still makes as many frauds as there "
        "are amounts above the threshold, but picks the transactions with the largest "
        "log(amount) + o x N(0, 1) (a soft boundary: genuine payments above it, frauds "
        "below it); scenario 3 multiplies by 1 + (1 - o) x (compromised_amount_factor - 1). "
        "1: scenario 3 frauds are drawn exactly like the card's genuine payments.",
    )
    label_noise: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Share of labels reported wrong: each transaction's is_fraud is flipped "
        "with this probability (genuine reported as fraud, fraud as genuine), seeded. The "
        "label stream carries the noisy label; fraud_scenario keeps the true one.",
    )


class ReplaySettings(_Section):
    path: Path | None = Field(None, description="Parquet or CSV file to stream instead.")
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="Map of our column name -> the file's column name "
        "(transaction_id, ts, customer_id, terminal_id, amount, is_fraud).",
    )


class GatherSettings(_Section):
    source: Literal["simulator", "replay"] = "simulator"
    rate: float = Field(10000.0, gt=0, description="Transactions per wall-clock second.")
    batch_interval_s: float = Field(0.5, gt=0, description="A batch is published this often.")
    max_batch_rows: int = Field(50000, ge=1, description="Upper bound on rows per batch.")
    label_delay_days: float = Field(
        7.0, ge=0, description="Simulated days between a transaction and its fraud label."
    )
    days: int | None = Field(
        None, ge=1, description="Stop after this many simulated days (None: run forever)."
    )
    log_retention_days: int = Field(
        60,
        ge=1,
        description="Simulated days of transaction/label log (state/log) kept behind the "
        "oldest raw batch not yet processed (or gather's position, if older): the history "
        "preprocess still needs. At least the features' lookback (terminal_delay_days + the "
        "longest window) plus a day.",
    )
    simulator: SimulatorSettings = Field(default_factory=SimulatorSettings)  # type: ignore[arg-type]
    replay: ReplaySettings = Field(default_factory=ReplaySettings)  # type: ignore[arg-type]

    @model_validator(mode="after")
    def _replay_needs_path(self) -> GatherSettings:
        if self.source == "replay" and self.replay.path is None:
            raise ValueError("source is 'replay' but replay.path is not set")
        return self


class FeatureSettings(_Section):
    windows_days: list[int] = Field(
        default_factory=lambda: [1, 7, 30], min_length=1, description="Rolling windows (days)."
    )
    terminal_delay_days: int = Field(
        7, ge=0, description="Terminal risk windows end this many days back (label delay)."
    )
    store_retention_days: int = Field(
        60, ge=1, description="Simulated days of computed features kept for training."
    )
    extended: bool = Field(
        True,
        description="Add fraudpipe's 11 features to the handbook's 15: the amount over the "
        "card's own mean (per window, and over its settled history, old enough to be labeled), "
        "its recent spending over that history, and the terminal's known frauds (days since "
        "the first and last, their share and mean amount, its latest transaction).",
    )


class TrainSettings(_Section):
    interval_s: float = Field(60.0, gt=0, description="Seconds between scheduled trainings.")
    min_labeled_rows: int = Field(20000, ge=100, description="Needed before the first model.")
    min_frauds: int = Field(50, ge=1, description="Fraud labels needed in the training window.")
    train_days: int = Field(14, ge=1, description="Simulated days of labeled data to train on.")
    holdout_days: int = Field(3, ge=1, description="Most recent labeled days held out.")
    num_boost_round: int = Field(
        200, ge=1, description="Boosting rounds at most (early stopping may use fewer)."
    )
    valid_days: int = Field(
        2,
        ge=0,
        description="Last days of the training window used to early-stop boosting before a "
        "refit on the whole window (0: no early stopping, num_boost_round rounds).",
    )
    learning_rate: float = Field(0.05, gt=0, le=1)
    num_leaves: int = Field(31, ge=2)
    min_data_in_leaf: int = Field(50, ge=1)
    max_bin: int = Field(
        4095,
        ge=2,
        description="Histogram bins a feature at most (LightGBM's max_bin). LightGBM's 255 "
        "leaves a rare large amount in one wide bin, which blurs a sharp amount threshold "
        "(average precision -0.012 over the handbook's folds, README). LightGBM's GPU learner "
        "holds 255 at most: set 255 to train with --device=gpu.",
    )
    threads: int = Field(0, ge=0, description="LightGBM threads (0: all cores).")
    min_improvement: float = Field(
        0.0, ge=0, description="Average-precision gain a challenger needs to be promoted."
    )
    shadow: bool = Field(
        True,
        description="A challenger that does not beat the champion on holdout is scored in "
        "shadow (models/shadow) beside it until the next one, its live figures shown beside "
        "the champion's; infer scores such rows twice.",
    )
    drift_psi_max: float | None = Field(
        0.25,
        gt=0,
        description="Train as soon as the population stability index (PSI) of the champion's "
        "score, or of any model feature, between its training window and recent traffic "
        "passes this (0.1: moderate shift, 0.25: major). None: drift is measured and "
        "reported, never a reason to train.",
    )
    drift_window_days: float = Field(
        7.0,
        gt=0,
        description="Recent traffic for drift: the feature-store rows of the newest this many "
        "simulated days. Keep whole weeks: a shorter window makes weekly features "
        "(is_weekend) drift by construction.",
    )
    drift_interval_s: float = Field(
        60.0, gt=0, description="Seconds between drift measurements by the train stage."
    )
    drift_min_rows: int = Field(
        1000, ge=10, description="Recent rows needed to measure drift (fewer: not measured)."
    )
    drift_cooldown_s: float = Field(
        600.0,
        ge=0,
        description="A drift-triggered training starts no sooner than this after the previous "
        "training (drift persists until labels of the new traffic arrive).",
    )


ScorerKind = Literal["auto", "compiled", "arrays", "onnx", "lightgbm"]  # scoring.py


class InferSettings(_Section):
    threshold: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Alert when score >= threshold (None: the threshold chosen on the model's "
        "holdout and stored in its manifest).",
    )
    scorer: ScorerKind = Field(
        "auto",
        description="How infer scores: compiled (the forest as native code, exact to "
        "LightGBM), arrays (the forest walked as arrays on the stage's device: numpy or "
        "cupy, exact to LightGBM), onnx (onnxruntime, float32) or lightgbm (the booster's own "
        "predict); auto: compiled on --device=cpu, arrays on --device=gpu.",
    )
    threads: int = Field(1, ge=1, description="Scoring threads per infer worker.")


class MetricsSettings(_Section):
    host: str = "0.0.0.0"
    port: int = Field(9108, ge=0, le=65535, description="/metrics and /healthz (0: any free).")


# The forms of a dashboard.allowed_hosts entry (the chart's schema checks the same pattern).
HOST_PATTERN = (
    r"^(\*|(\*\.|\.)?[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
    r"(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?|\[[0-9A-Fa-f:.]+\])$"
)
_HOST_FORMS = (
    "a host name, an IPv4 or [IPv6] address, .domain (it and its subdomains), *.domain (its "
    "subdomains) or * (any host), without scheme or port"
)


def _allowed_host(entry: str) -> str:
    if not re.fullmatch(HOST_PATTERN, entry) or (
        entry.startswith("[") and not _is_ipv6(entry[1:-1])
    ):
        raise ValueError(f"{entry!r} is not {_HOST_FORMS}")
    return entry.lower()


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _host_list(value: Any) -> Any:
    """One string (what the environment gives): a JSON list, or names separated by commas."""
    if not isinstance(value, str):
        return value
    if value.lstrip().startswith("["):
        try:
            return json.loads(value)
        except ValueError as exc:
            raise ValueError(f"not a JSON list of hosts: {exc}") from None
    return [part.strip() for part in value.split(",") if part.strip()]


AllowedHost = Annotated[
    str,
    AfterValidator(_allowed_host),
    WithJsonSchema({"type": "string", "pattern": HOST_PATTERN}),
]


class DashboardSettings(_Section):
    host: str = Field(
        "127.0.0.1", description="Address the dashboard listens on (0.0.0.0 in a cluster)."
    )
    port: int = Field(8080, ge=0, le=65535, description="Dashboard web port (0: any free).")
    allowed_hosts: Annotated[list[AllowedHost], NoDecode, BeforeValidator(_host_list)] = Field(
        default_factory=lambda: ["localhost", "127.0.0.1", "[::1]"],
        description="Host names the web port answers to (the Host header, port ignored); "
        "any other Host is refused (400), which stops DNS rebinding. The listen `host` is "
        "added when it is a concrete address. Entries: " + _HOST_FORMS + ". One string "
        "(the environment) is a JSON list or names separated by commas.",
    )
    latency_warn_s: float = Field(
        10.0,
        gt=0,
        description="Warn when the median end-to-end latency (stream entry to score) of the "
        "rows scored in the last 30 s reaches this many seconds; critical at 3 times it. "
        "Each notice clears only below half its threshold.",
    )
    token: SecretStr | None = Field(
        None,
        description="Bearer token the controls require (scale, pause, rate, retrain); "
        "unset: the dashboard is read-only.",
    )
    history_s: int = Field(600, ge=10, description="Seconds of history kept for the charts.")
    recent_alerts: int = Field(20, ge=1, le=500, description="Latest alerts shown.")
    live_quality_rows: int = Field(
        200_000,
        ge=100,
        description="Live ROC AUC and AP are over the newest this many labeled rows.",
    )
    live_quality_min_frauds: int = Field(
        30, ge=1, description="Frauds a live figure needs among its rows (fewer: not shown)."
    )
    live_quality_margin: float = Field(
        0.1,
        gt=0,
        le=1,
        description="Warn when the champion's live average precision or ROC AUC is this far "
        "below its holdout's; the warning clears at half the margin.",
    )


class LogSettings(_Section):
    format: Literal["auto", "json", "text"] = Field(
        "auto", description="auto: text on a terminal, JSON otherwise."
    )
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


_FILE_DATA: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "fraudpipe_config_file_data", default=None
)


class _FileSource(PydanticBaseSettingsSource):
    """The YAML file's values, read once by load_settings (below the environment).

    Not pydantic-settings' own YamlConfigSettingsSource: given a path that does not exist it
    returns nothing, so a mistyped `--config` would run on defaults; a file holding a list
    fails with a bare TypeError. load_settings reads and checks the file itself (exit 2,
    naming the file) and hands the mapping to this source.
    """

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return (_FILE_DATA.get() or {}).get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_FILE_DATA.get() or {})


class Settings(BaseSettings):
    """Everything a fraudpipe process can be told."""

    model_config = SettingsConfigDict(
        env_prefix="FRAUDPIPE_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_assignment=True,
    )

    data_dir: Path = Field(Path("fraudpipe-data"), description="Root of the shared volume.")
    queue: QueueSettings = Field(default_factory=QueueSettings)  # type: ignore[arg-type]
    gather: GatherSettings = Field(default_factory=GatherSettings)  # type: ignore[arg-type]
    features: FeatureSettings = Field(default_factory=FeatureSettings)  # type: ignore[arg-type]
    train: TrainSettings = Field(default_factory=TrainSettings)  # type: ignore[arg-type]
    infer: InferSettings = Field(default_factory=InferSettings)  # type: ignore[arg-type]
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)  # type: ignore[arg-type]
    dashboard: DashboardSettings = Field(default_factory=DashboardSettings)  # type: ignore[arg-type]
    log: LogSettings = Field(default_factory=LogSettings)  # type: ignore[arg-type]

    @model_validator(mode="after")
    def _log_covers_lookback(self) -> Settings:
        f = self.features
        need = f.terminal_delay_days + max(f.windows_days, default=0) + 1
        if self.gather.log_retention_days < need:
            raise ValueError(
                f"gather.log_retention_days ({self.gather.log_retention_days}) must be at least "
                f"{need}: the features look {need - 1} days back (features.terminal_delay_days "
                "+ the longest of features.windows_days), and a day more is kept"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _FileSource(settings_cls))


def _shown(value: object, limit: int = 200) -> str:
    """repr(value), cut short when long: an error names the value, it need not echo it."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def _explain(err: ValidationError, config_file: Path | None) -> str:
    lines = ["invalid configuration:"]
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "(top level)"
        value = e.get("input")
        shown = "(missing)" if e["type"] == "missing" else _shown(value)
        if isinstance(value, dict) and e["type"] not in ("extra_forbidden",):
            shown = "(section)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling; `fraudpipe config` lists every field)"
        if not e["loc"]:  # a rule across sections: its message names the fields
            lines.append(f"  {msg.removeprefix('Value error, ')}")
            continue
        env = "FRAUDPIPE_" + "__".join(p.upper() for p in e["loc"] if isinstance(p, str))
        lines.append(f"  {field} = {shown}: {msg}  [env {env}]")
    if config_file is not None:
        lines.append(f"  (config file: {config_file})")
    return "\n".join(lines)


def nest(dotted: dict[str, Any]) -> dict[str, Any]:
    """Turn {"queue.lease_s": 3} into {"queue": {"lease_s": 3}}; None values are dropped."""
    out: dict[str, Any] = {}
    for key, value in dotted.items():
        if value is None:
            continue
        parts = key.split(".")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def load_settings(
    config_file: Path | None = None, overrides: dict[str, Any] | None = None
) -> Settings:
    """Build the settings from every source; raise ConfigError on any invalid value."""
    loaded: Any = None
    if config_file is not None:
        if not config_file.exists() or config_file.is_dir():
            raise ConfigError(f"invalid configuration: --config {config_file}: no such file")
        try:
            loaded = yaml.safe_load(config_file.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"invalid configuration: {config_file} is not YAML: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(
                f"invalid configuration: {config_file} must hold a mapping of fields, "
                f"got {type(loaded).__name__}"
            )
    token = _FILE_DATA.set(loaded or {})
    try:
        return Settings(**nest(overrides or {}))
    except ValidationError as exc:
        raise ConfigError(_explain(exc, config_file)) from None
    finally:
        _FILE_DATA.reset(token)
