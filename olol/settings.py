"""Run-time settings: the ones that can change while the proxy serves (issue 16).

The TOML file, ``OLOL_*`` variables and flags give the boot values (ProxyConfig). A
setting marked ``live`` in the schema can then be changed through
``PATCH /olol/v1/config`` or ``olol config set``: the change is checked with the same
typed schema (plus each setting's range), written to the store's ``config`` table
(``setting.<name>`` rows, which win over the boot value at the next start too, until
reset) with an entry in ``config_history`` saying who changed what and when, and
applied at once to the running components, which read it on their next decision. A
setting that is not live answers that it needs a restart.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import fields
from typing import TYPE_CHECKING, Any

from olol.context import ProxyConfig, config_fields, default_of, type_problem
from olol.store.database import iso_utc
from olol.store.schema import Field, TableSchema

if TYPE_CHECKING:
    from olol.interfaces import Store

log = logging.getLogger(__name__)

PREFIX = "setting."
HISTORY_TABLE = "config_history"
HISTORY_LIMIT = 1_000
HISTORY_SCHEMA = TableSchema(HISTORY_TABLE, {
    "key": Field("str", required=True), "at": Field("str", required=True),
    "old": Field("any", nullable=True), "new": Field("any", nullable=True),
    "by": Field("str", nullable=True),
})

Apply = Callable[[Any], None]


class SettingError(ValueError):
    """A change that is refused; the message names the setting."""


def _positive(name: str, value: Any) -> None:
    if not value > 0:
        raise SettingError(f"{name} must be greater than 0, got {value!r}")


def _non_negative(name: str, value: Any) -> None:
    if value < 0:
        raise SettingError(f"{name} must be 0 or more, got {value!r}")


def _fraction(name: str, value: Any) -> None:
    if not 0 < value <= 1:
        raise SettingError(f"{name} must be in (0, 1], got {value!r}")


#: Range checks beyond the type (the schema's); a live setting without one is
#: positive when numeric.
def _priority(name: str, value: Any) -> None:
    if not -100 <= value <= 100:
        raise SettingError(f"{name} must be in -100..100, got {value!r}")


CHECKS: dict[str, Callable[[str, Any], None]] = {
    "default_priority": _priority,
    "retry_backoff_s": _non_negative,
    "first_record_timeout_s": _non_negative,
    "stall_timeout_s": _non_negative,
    "outlier_failure_rate": _fraction,
    "outlier_max_ejected_fraction": _fraction,
}


def check_value(name: str, value: Any) -> None:
    """Type (the schema's) and range of one setting. :raises SettingError:"""
    problem = type_problem(name, value)
    if problem:
        raise SettingError(problem)
    check = CHECKS.get(name)
    if check is not None:
        check(name, value)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        _positive(name, value)


class RuntimeSettings:
    """The live settings of one proxy.

    :param config: the running ProxyConfig (changed in place: code that reads it on
        each decision sees the new value).
    :param db: the store (``config`` and ``config_history`` tables).
    :param appliers: for a setting whose value a component copied at start-up, how to
        hand it the new one (called after the checks, may raise SettingError to refuse).
    """

    def __init__(self, config: ProxyConfig, db: Store, *, clock: Callable[[], float] = time.time,
                 appliers: dict[str, Apply] | None = None):
        self.config = config
        self.db = db
        self.clock = clock
        self.appliers: dict[str, Apply] = dict(appliers or {})
        self._lock = threading.Lock()
        self._live = {f.name: f for f in config_fields() if f.metadata.get("live")}
        self._boot = {name: getattr(config, name) for name in self._live}
        db.register_table(HISTORY_SCHEMA)

    def add_applier(self, name: str, apply: Apply) -> None:
        self.appliers[name] = apply

    # -- start-up --------------------------------------------------------------------------
    def load(self) -> dict[str, Any]:
        """Apply the changes stored by earlier runs; a stored value that no longer
        passes the checks is skipped with a warning. Returns what was applied."""
        applied = {}
        for doc in self.db.search("config", lambda d: str(d.get("key", "")).startswith(PREFIX)):
            name = doc["key"][len(PREFIX):]
            if name not in self._live:
                log.warning("ignoring stored setting %r: it is not a run-time setting", name)
                continue
            try:
                check_value(name, doc.get("value"))
                self._apply(name, doc.get("value"))
            except (SettingError, ValueError) as exc:
                log.warning("ignoring stored setting %s: %s", name, exc)
                continue
            applied[name] = doc.get("value")
        if applied:
            log.info("run-time settings from the store: %s",
                     ", ".join(f"{k}={v!r}" for k, v in sorted(applied.items())))
        return applied

    def follow(self) -> bool:
        """On a shared store (several proxies), apply the changes other proxies make,
        as they make them (the store's change feed). Returns whether it follows."""
        if not getattr(self.db, "shared", False):
            return False
        self.db.watch("config", self._on_change)
        return True

    def _on_change(self, table: str, doc_ids: Any, origin: str) -> None:
        if origin != getattr(self.db, "origin", None):
            self.sync_from_store()

    def sync_from_store(self) -> dict[str, Any]:
        """Bring every live setting to the value stored (its boot value when none is):
        what another proxy changed or reset. Returns what changed here."""
        stored = {doc["key"][len(PREFIX):]: doc.get("value") for doc in self.db.search(
            "config", lambda d: str(d.get("key", "")).startswith(PREFIX))}
        changed: dict[str, Any] = {}
        with self._lock:
            for name in self._live:
                want = stored.get(name, self._boot[name])
                if _jsonable(getattr(self.config, name)) == _jsonable(want):
                    continue
                try:
                    check_value(name, want)
                    self._apply(name, want)
                except (SettingError, ValueError) as exc:
                    log.warning("ignoring setting %s from another proxy: %s", name, exc)
                    continue
                changed[name] = want
        if changed:
            log.info("run-time settings changed by another proxy: %s",
                     ", ".join(f"{k}={v!r}" for k, v in sorted(changed.items())))
        return changed

    # -- reading ---------------------------------------------------------------------------
    def view(self) -> dict[str, dict[str, Any]]:
        """Every setting: value, boot value, default, whether it can change at run time,
        and its help."""
        stored = {doc["key"][len(PREFIX):]: doc for doc in self.db.search(
            "config", lambda d: str(d.get("key", "")).startswith(PREFIX))}
        out = {}
        for f in config_fields():
            value = getattr(self.config, f.name)
            if f.name in ("node_token",):
                value = "(set)" if value else None  # never show a secret
            elif f.name == "store" and value:
                from olol.address import redact_url

                value = redact_url(value)  # a database URL may carry a password
            entry: dict[str, Any] = {
                "value": _jsonable(value), "default": _jsonable(default_of(f.name)),
                "live": bool(f.metadata.get("live")), "help": f.metadata.get("help", ""),
            }
            if f.name in self._live:
                entry["boot"] = _jsonable(self._boot[f.name])
            if f.name in stored:
                entry["changed_by"] = stored[f.name].get("by")
                entry["changed_at"] = stored[f.name].get("at")
            out[f.name] = entry
        return out

    def history(self, limit: int = 100) -> list[dict[str, Any]]:
        docs = self.db.all(HISTORY_TABLE)
        return [dict(d) for d in docs[-limit:]][::-1]

    # -- changing --------------------------------------------------------------------------
    def change(self, changes: dict[str, Any], who: str | None) -> dict[str, Any]:
        """Check every change, then apply and record them all (``None`` resets a setting
        to its boot value). Returns the new values.

        :raises SettingError: an unknown setting, one that needs a restart, or a bad
            value; nothing is changed then.
        """
        if not isinstance(changes, dict) or not changes:
            raise SettingError("give the settings to change as a JSON object, "
                               'e.g. {"strategy": "least-busy"}')
        known = {f.name for f in fields(ProxyConfig)}
        wanted: dict[str, Any] = {}
        for name, value in changes.items():
            if name not in known:
                raise SettingError(f"unknown setting {name!r}")
            if name not in self._live:
                raise SettingError(f"{name} cannot change while the proxy runs: set it in "
                                   "the config file (or its flag) and restart")
            value = self._boot[name] if value is None else value
            check_value(name, value)
            wanted[name] = value
        with self._lock:
            old = {name: getattr(self.config, name) for name in wanted}
            done = []
            try:
                for name, value in wanted.items():
                    self._apply(name, value)
                    done.append(name)
            except Exception:
                for name in done:  # put back what was applied before the refusal
                    try:
                        self._apply(name, old[name])
                    except Exception:  # noqa: BLE001 - best effort
                        log.exception("could not restore setting %s", name)
                raise
            self._record(changes, wanted, old, who)
        for name, value in wanted.items():
            log.info("setting %s changed from %r to %r by %s", name, old[name], value,
                     who or "an unnamed caller")
        return {name: _jsonable(value) for name, value in wanted.items()}

    def _apply(self, name: str, value: Any) -> None:
        apply = self.appliers.get(name)
        if apply is not None:
            try:
                apply(value)
            except SettingError:
                raise
            except (ValueError, KeyError, TypeError) as exc:
                raise SettingError(f"{name}: {exc}") from None
        setattr(self.config, name, value)

    def _record(self, changes: dict[str, Any], wanted: dict[str, Any], old: dict[str, Any],
                who: str | None) -> None:
        at = iso_utc(self.clock())
        with self.db.transaction():
            for name, value in wanted.items():
                key = PREFIX + name
                if changes[name] is None:
                    self.db.remove("config", {"key": key})
                else:
                    self.db.upsert("config", {"key": key, "value": value, "by": who,
                                              "at": at}, {"key": key})
                self.db.insert(HISTORY_TABLE, {"key": name, "old": _jsonable(old[name]),
                                               "new": _jsonable(value), "by": who, "at": at})
        ids = [d.doc_id for d in self.db.all(HISTORY_TABLE)]
        if len(ids) > HISTORY_LIMIT:
            self.db.remove(HISTORY_TABLE, sorted(ids)[:len(ids) - HISTORY_LIMIT])


def _jsonable(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


def install_settings(proxy: Any) -> RuntimeSettings:
    """The run-time settings of a built Proxy: appliers for the values its components
    copied at start-up, and the changes stored by earlier runs applied."""
    from olol.maintenance import job_intervals
    from olol.scheduler import STRATEGIES

    queue, dispatcher = proxy.queue, proxy.dispatcher
    outliers = proxy.cluster.outliers

    def strategy(value: str) -> None:
        if value not in STRATEGIES:
            raise SettingError(f"strategy must be one of {', '.join(STRATEGIES)}, got {value!r}")
        proxy.scheduler.strategy = value

    def attempts(value: int) -> None:
        dispatcher.max_attempts = value
        queue.max_attempts = value

    def ejection(name: str) -> Apply:
        def apply(value: float) -> None:
            base = value if name == "base_ejection_s" else outliers.base_ejection_s
            top = value if name == "max_ejection_s" else outliers.max_ejection_s
            if base > top:
                raise SettingError("outlier_base_ejection_s may not exceed "
                                   "outlier_max_ejection_s")
            setattr(outliers, name, type(getattr(outliers, name))(value))
        return apply

    def intervals(value: dict) -> None:
        probe = type("Intervals", (), {"job_intervals": value,
                                       "health_interval_s": proxy.config.health_interval_s})
        wanted = job_intervals(probe)  # checks names and values
        jobs = getattr(proxy, "maintenance", None)
        if jobs is not None:
            for name, seconds in wanted.items():
                try:
                    jobs.set_interval(name, seconds)
                except KeyError:
                    pass  # a job this proxy does not run

    def attr(target: Any, name: str, cast: Callable[[Any], Any]) -> Apply:
        return lambda value: setattr(target, name, cast(value))

    def retention(period: str) -> Apply:  # read by the next prune and the next query
        return lambda value: proxy.stats.retention_days.__setitem__(period, float(value))

    appliers: dict[str, Apply] = {
        "max_queue_depth": attr(queue, "max_depth", int),
        "max_queue_depth_per_model": attr(queue, "max_depth_per_model", int),
        "max_queued_bytes": attr(queue, "max_queued_bytes", int),
        "max_finished_sync": attr(queue, "max_finished_sync", int),
        "retention_hours": attr(queue, "retention_hours", float),
        "strategy": strategy,
        "max_attempts": attempts,
        "retry_backoff_s": attr(dispatcher, "retry_backoff_s", float),
        "first_record_timeout_s": attr(dispatcher, "first_record_timeout_s", float),
        "stall_timeout_s": attr(dispatcher, "stall_timeout_s", float),
        "resume_streams": attr(dispatcher, "resume_streams", bool),
        "max_resumes": attr(dispatcher, "max_resumes", int),
        "outlier_consecutive_failures": attr(outliers, "consecutive_failures", int),
        "outlier_failure_rate": attr(outliers, "failure_rate", float),
        "outlier_base_ejection_s": ejection("base_ejection_s"),
        "outlier_max_ejection_s": ejection("max_ejection_s"),
        "outlier_max_ejected_fraction": attr(outliers, "max_ejected_fraction", float),
        "job_intervals": intervals,
        "stats_hourly_retention_days": retention("hourly"),
        "stats_daily_retention_days": retention("daily"),
        "stats_weekly_retention_days": retention("weekly"),
        "stats_max_series": attr(proxy.stats, "max_series", int),
        "server_stats_retention_hours": attr(proxy.health, "retention_hours", float),
        # default_priority and max_body_bytes are read from the config on every request
    }
    settings = RuntimeSettings(proxy.config, proxy.db, clock=proxy.clock, appliers=appliers)
    settings.load()
    settings.follow()  # several proxies on one shared store: one set of settings
    return settings
