"""The tenants file (`ember serve --tenants tenants.toml`), read and checked into a `TenantsConfig`.

```toml
[classes.batch]            # optional: overrides a default class or adds one
priority = 2
max_queued = 4096
queue_timeout = 3600.0
sheddable = true
stream_interval = 0.1      # seconds between a stream's chunks at most (default: the server's)
background = true          # the server's work for it yields to other classes' when busy

[tenants.acme]
keys = ["sha256:9f86d081..."]   # from `ember keys create --tenant acme`
class = "interactive"
weight = 2.0
requests_per_minute = 600
tokens_per_minute = 200000
max_concurrent = 32
models = ["SmolLM2-135M-Instruct-Q4_1"]
expires = 2027-01-01T00:00:00Z
```

A key may also be a table, `{ hash = "sha256:...", expires = 2027-01-01 }`, to expire on its
own. Anything wrong (syntax, an unknown class or field, a duplicate key, a negative limit) is a
`TenantsFileError` naming the file, the tenant or class, and the field.
"""

from __future__ import annotations

import re
import tomllib
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any, NoReturn

from ember.errors import EmberError
from ember.serve.api_keys import is_key_hash, short_id
from ember.serve.service_classes import DEFAULT_CLASS, DEFAULT_SERVICE_CLASSES, ServiceClass
from ember.serve.tenants import Tenant, TenantKey, TenantLimits, TenantsConfig

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_TENANT_FIELDS = (
    "keys",
    "class",
    "weight",
    "requests_per_minute",
    "tokens_per_minute",
    "max_concurrent",
    "models",
    "expires",
)
_CLASS_FIELDS = (
    "priority",
    "max_queued",
    "queue_timeout",
    "sheddable",
    "stream_interval",
    "background",
)
_KEY_FIELDS = ("hash", "expires")
_LIMIT_FIELDS = ("requests_per_minute", "tokens_per_minute", "max_concurrent")


def valid_name(name: str) -> bool:
    """A tenant's or class's name: it becomes a metrics label and a TOML table's key."""
    return _NAME.fullmatch(name) is not None


class TenantsFileError(EmberError):
    """The tenants file cannot be used as written; the message names the place to fix."""


def load_tenants_file(path: str | Path) -> TenantsConfig:
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as error:
        raise TenantsFileError(f"{path}: cannot read the tenants file: {error.strerror}") from None
    except UnicodeDecodeError:
        raise TenantsFileError(f"{path}: the tenants file is not UTF-8") from None
    return parse_tenants(text, str(path))


def parse_tenants(text: str, source: str) -> TenantsConfig:
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise TenantsFileError(f"{source}: not valid TOML: {error}") from None
    return _Parser(source).config(document)


class _Parser:
    def __init__(self, source: str) -> None:
        self._source = source

    def fail(self, where: str, message: str) -> NoReturn:
        raise TenantsFileError(f"{self._source}: {where}: {message}")

    def config(self, document: dict[str, Any]) -> TenantsConfig:
        self._unknown("the top level", document, ("classes", "tenants"))
        classes = dict(DEFAULT_SERVICE_CLASSES)
        for name, table in self._table(document, "classes", "class").items():
            classes[name] = self._service_class(name, table, classes.get(name))
        tenants: dict[str, Tenant] = {}
        owners: dict[str, str] = {}
        for name, table in self._table(document, "tenants", "tenant").items():
            tenant = self._tenant(name, table, classes)
            for key in tenant.keys:
                other = owners.setdefault(key.hash, name)
                if other != name or sum(k.hash == key.hash for k in tenant.keys) > 1:
                    self.fail(
                        f"tenant {name!r}",
                        f"field 'keys': the key {short_id(key.hash)} is also a key of tenant "
                        f"{other!r}; a key belongs to one tenant, once",
                    )
            tenants[name] = tenant
        return TenantsConfig(classes, tenants, self._source)

    def _table(self, parent: dict[str, Any], name: str, singular: str) -> dict[str, Any]:
        value = parent.get(name, {})
        if not isinstance(value, dict):
            self.fail("the top level", f"'{name}' must be a table ([{name}.NAME] sections)")
        for key, item in value.items():
            if not _NAME.fullmatch(key):
                self.fail(
                    f"{singular} {key!r}",
                    "a name is 1-64 letters, digits, '_', '.', '-', starting with a letter "
                    "or digit",
                )
            if not isinstance(item, dict):
                self.fail(f"[{name}.{key}]", "must be a table of fields")
        return value

    def _unknown(self, where: str, table: dict[str, Any], known: tuple[str, ...]) -> None:
        for name in table:
            if name not in known:
                self.fail(where, f"unknown field {name!r}; the fields are {', '.join(known)}")

    def _service_class(
        self, name: str, table: dict[str, Any], default: ServiceClass | None
    ) -> ServiceClass:
        where = f"class {name!r}"
        self._unknown(where, table, _CLASS_FIELDS)
        if default is None and "priority" not in table:
            self.fail(where, "field 'priority' is required for a new class")
        base = default or ServiceClass(name, 0, 512, 300.0, False)
        priority = self._int(where, table, "priority", base.priority, low=None)
        max_queued = self._int(where, table, "max_queued", base.max_queued, low=0)
        timeout = self._number(where, table, "queue_timeout", base.queue_timeout)
        sheddable = self._flag(where, table, "sheddable", base.sheddable)
        background = self._flag(where, table, "background", base.background)
        interval = table.get("stream_interval", base.stream_interval)
        if interval is not None and (
            isinstance(interval, bool) or not isinstance(interval, int | float)
            or not 0 <= interval <= 10
        ):  # fmt: skip
            self.fail(where, f"field 'stream_interval' must be 0 to 10 seconds, got {interval!r}")
        assert priority is not None and max_queued is not None
        return ServiceClass(
            name,
            priority,
            max_queued,
            timeout,
            sheddable,
            None if interval is None else float(interval),
            background,
        )

    def _flag(self, where: str, table: dict[str, Any], field: str, default: bool) -> bool:
        value = table.get(field, default)
        if not isinstance(value, bool):
            self.fail(where, f"field {field!r} must be true or false, got {value!r}")
        return value

    def _tenant(self, name: str, table: dict[str, Any], classes: dict[str, ServiceClass]) -> Tenant:
        where = f"tenant {name!r}"
        self._unknown(where, table, _TENANT_FIELDS)
        class_name = table.get("class", DEFAULT_CLASS)
        if class_name not in classes:
            self.fail(
                where,
                f"field 'class': unknown class {class_name!r}; the classes are "
                f"{', '.join(classes)} (add others as [classes.NAME])",
            )
        limits = TenantLimits(
            *(self._int(where, table, field, None, low=1) for field in _LIMIT_FIELDS)
        )
        models = table.get("models")
        if models is not None and not (
            isinstance(models, list) and all(isinstance(m, str) for m in models)
        ):
            self.fail(where, "field 'models' must be a list of model names")
        return Tenant(
            name=name,
            service_class=classes[class_name],
            weight=self._number(where, table, "weight", 1.0),
            limits=limits,
            models=None if models is None else frozenset(models),
            expires=self._expiry(where, table.get("expires")),
            keys=self._keys(where, table.get("keys", [])),
        )

    def _keys(self, where: str, value: Any) -> tuple[TenantKey, ...]:
        if not isinstance(value, list):
            self.fail(where, "field 'keys' must be a list of key hashes")
        keys = []
        for item in value:
            table = item if isinstance(item, dict) else {"hash": item}
            self._unknown(f"{where}, a key in 'keys'", table, _KEY_FIELDS)
            stored = table.get("hash")
            if not (isinstance(stored, str) and is_key_hash(stored)):
                shown = f"{stored[:12]!r}..." if isinstance(stored, str) else repr(stored)
                self.fail(
                    where,
                    f"field 'keys': {shown} is not a key hash ('sha256:' and 64 lowercase hex "
                    "digits, as `ember keys create` prints; never the key itself)",
                )
            keys.append(TenantKey(stored, self._expiry(where, table.get("expires"))))
        return tuple(keys)

    def _int(
        self, where: str, table: dict[str, Any], field: str, default: int | None, low: int | None
    ) -> int | None:
        value = table.get(field, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(where, f"field {field!r} must be an integer, got {value!r}")
        if low is not None and value < low:
            hint = " (leave it out for no limit)" if field in _LIMIT_FIELDS else ""
            self.fail(where, f"field {field!r} must be >= {low}, got {value}{hint}")
        return int(value)

    def _number(self, where: str, table: dict[str, Any], field: str, default: float) -> float:
        value = table.get(field, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            self.fail(where, f"field {field!r} must be a positive number, got {value!r}")
        return float(value)

    def _expiry(self, where: str, value: Any) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, datetime):
            if value.tzinfo is None:
                self.fail(where, f"field 'expires': {value} needs a time zone (add Z for UTC)")
            return value
        if isinstance(value, date):
            return datetime.combine(value, time(), UTC)
        self.fail(where, f"field 'expires' must be a TOML date or date-time, got {value!r}")
