"""The model registry: named models with numbered versions and movable aliases.

A registered model `registeredModels/{name}` has versions 1, 2, ... each of which
is an existing `models/{id}`; version numbers are never reused, even after a
version is deleted. `latest` always points at the newest version (it is
computed, never stored); other aliases (`production`, `staging`, ...) are
stored and move only when told. Names follow Vertex AI's model registry:
`registeredModels/{name}@{version}` and `registeredModels/{name}@{alias}` name
one version, `registeredModels/{name}` the latest.

Plain functions over an open sqlite3 connection; store.py calls them inside its
lock or write transaction, so each operation is atomic.
"""

from __future__ import annotations

import re
import sqlite3

from gradwire.v1 import models_pb2

from . import errors

COLLECTION = "registeredModels"
LATEST = "latest"
MAX_VERSION = 2**63 - 1  # SQLite's largest integer
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
ALIAS_RE = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")


def _timestamp(seconds: float):
    from .store import timestamp  # store imports this module

    return timestamp(seconds)


def split_name(name: str, field: str) -> tuple[str, str | None]:
    """`registeredModels/digits@production` -> ("digits", "production"); no `@` -> (name, None)."""
    prefix = COLLECTION + "/"
    if not name.startswith(prefix):
        raise errors.InvalidArgument(
            f"expected 'models/{{id}}', '{COLLECTION}/{{name}}' or '{COLLECTION}/{{name}}@{{version or alias}}', got {name!r}",
            field=field,
        )
    short, _, selector = name[len(prefix):].partition("@")
    if not NAME_RE.match(short):
        raise errors.InvalidArgument(
            f"registered model names are 1-64 letters, digits, '-', '_' or '.', starting with a letter or digit; got {short!r}",
            field=field,
        )
    if "@" in name and not selector:
        raise errors.InvalidArgument(f"nothing after '@' in {name!r}; give a version number or an alias", field=field)
    return short, (selector if "@" in name else None)


def plain_name(name: str, field: str) -> str:
    """`registeredModels/{name}` -> name, refusing a `@version` / `@alias` (the call names the
    registered model itself, not one of its versions)."""
    short, selector = split_name(name, field)
    if selector is not None:
        raise errors.InvalidArgument(f"expected '{COLLECTION}/{{name}}' without '@{selector}'", field=field)
    return short


def check_alias(alias: str, field: str) -> None:
    if alias == LATEST:
        raise errors.InvalidArgument("'latest' is managed by the server: it always points at the newest version", field=field)
    if not ALIAS_RE.match(alias):
        raise errors.InvalidArgument(
            f"aliases are a lowercase letter, then up to 63 lowercase letters, digits, '-' or '_'; got {alias!r}", field=field
        )


def _row(db: sqlite3.Connection, short: str, name: str) -> tuple:
    row = db.execute("SELECT name, create_time, update_time FROM registered_models WHERE name = ?", (short,)).fetchone()
    if row is None:
        raise errors.NotFound(f"registered model '{name}' not found")
    return row


def _latest(db: sqlite3.Connection, short: str) -> tuple[int, str] | None:
    return db.execute(
        "SELECT version, model_id FROM model_versions WHERE registered_model = ? ORDER BY version DESC LIMIT 1", (short,)
    ).fetchone()


def resolve(db: sqlite3.Connection, name: str, field: str) -> str:
    """A registered model name (with or without `@version` / `@alias`) -> the model id it points at."""
    short, selector = split_name(name, field)
    _row(db, short, f"{COLLECTION}/{short}")
    if selector is None or selector == LATEST:
        latest = _latest(db, short)
        if latest is None:
            raise errors.NotFound(f"registered model '{COLLECTION}/{short}' has no versions")
        return latest[1]
    if selector.isascii() and selector.isdigit():  # ("²".isdigit() too; int() refuses it)
        version = int(selector)
        row = None if version > MAX_VERSION else db.execute(  # past SQLite's integers: no such version
            "SELECT model_id FROM model_versions WHERE registered_model = ? AND version = ?", (short, version)
        ).fetchone()
        if row is None:
            raise errors.NotFound(f"version {selector} of registered model '{COLLECTION}/{short}' not found")
        return row[0]
    row = db.execute(
        "SELECT v.model_id FROM model_aliases a JOIN model_versions v ON v.registered_model = a.registered_model AND v.version = a.version "
        "WHERE a.registered_model = ? AND a.alias = ?",
        (short, selector),
    ).fetchone()
    if row is None:
        raise errors.NotFound(f"alias {selector!r} of registered model '{COLLECTION}/{short}' not found")
    return row[0]


def publish(db: sqlite3.Connection, model_id: str, registered_model: str, aliases: list[str], now: float) -> int:
    """Make `model_id` the next version of `registered_model` (created if absent); returns the version."""
    short, selector = split_name(registered_model, "registered_model")
    if selector is not None:
        raise errors.InvalidArgument(f"publish into '{COLLECTION}/{short}', without '@{selector}'", field="registered_model")
    for i, alias in enumerate(aliases):
        check_alias(alias, f"aliases[{i}]")
    existing = db.execute("SELECT registered_model, version FROM model_versions WHERE model_id = ?", (model_id,)).fetchone()
    if existing is not None:
        raise errors.AlreadyExists(f"model 'models/{model_id}' is already version {existing[1]} of '{COLLECTION}/{existing[0]}'")
    created = db.execute(
        "INSERT OR IGNORE INTO registered_models (name, create_time, update_time) VALUES (?, ?, ?)", (short, now, now)
    ).rowcount
    if created:  # a name deleted before goes on numbering where it stopped: `name@3` never means two models
        retired = db.execute("SELECT next_version FROM retired_registered_models WHERE name = ?", (short,)).fetchone()
        if retired is not None:
            db.execute("UPDATE registered_models SET next_version = ? WHERE name = ?", (retired[0], short))
            db.execute("DELETE FROM retired_registered_models WHERE name = ?", (short,))
    (version,) = db.execute("SELECT next_version FROM registered_models WHERE name = ?", (short,)).fetchone()
    db.execute("UPDATE registered_models SET next_version = ?, update_time = ? WHERE name = ?", (version + 1, now, short))
    db.execute("INSERT INTO model_versions (registered_model, version, model_id) VALUES (?, ?, ?)", (short, version, model_id))
    for alias in aliases:
        db.execute("INSERT OR REPLACE INTO model_aliases (registered_model, alias, version) VALUES (?, ?, ?)", (short, alias, version))
    return version


def unpublish(db: sqlite3.Connection, model_id: str, now: float) -> None:
    """Before a model is deleted: drop its version (refused while a movable alias points at it)."""
    row = db.execute("SELECT registered_model, version FROM model_versions WHERE model_id = ?", (model_id,)).fetchone()
    if row is None:
        return
    short, version = row
    aliases = [a for (a,) in db.execute(
        "SELECT alias FROM model_aliases WHERE registered_model = ? AND version = ? ORDER BY alias", (short, version))]
    if aliases:
        raise errors.FailedPrecondition(
            f"model 'models/{model_id}' is version {version} of '{COLLECTION}/{short}' and alias(es) {', '.join(aliases)} "
            "point at it; move or delete them first"
        )
    db.execute("DELETE FROM model_versions WHERE model_id = ?", (model_id,))
    db.execute("UPDATE registered_models SET update_time = ? WHERE name = ?", (now, short))


def delete(db: sqlite3.Connection, name: str, force: bool) -> list[str]:
    """Drop a registered model with its aliases; returns the ids of its versions' models, which
    the caller deletes too. Refused while it has versions, unless ``force``. Its next version
    number is kept: registered again, the name goes on from there."""
    short = plain_name(name, "name")
    _row(db, short, name)
    (next_version,) = db.execute("SELECT next_version FROM registered_models WHERE name = ?", (short,)).fetchone()
    versions = db.execute("SELECT version, model_id FROM model_versions WHERE registered_model = ? ORDER BY version",
                          (short,)).fetchall()
    if versions and not force:
        listed = ", ".join(str(v) for v, _ in versions[:10]) + (", ..." if len(versions) > 10 else "")
        raise errors.FailedPrecondition(
            f"registered model '{COLLECTION}/{short}' still has {len(versions)} version(s) ({listed}); delete them "
            "first, or set force to delete them with it"
        )
    db.execute("DELETE FROM model_aliases WHERE registered_model = ?", (short,))
    db.execute("DELETE FROM model_versions WHERE registered_model = ?", (short,))
    db.execute("DELETE FROM registered_models WHERE name = ?", (short,))
    db.execute("INSERT OR REPLACE INTO retired_registered_models (name, next_version) VALUES (?, ?)", (short, next_version))
    return [model_id for _, model_id in versions]


def get(db: sqlite3.Connection, name: str, field: str = "name") -> models_pb2.RegisteredModel:
    short = plain_name(name, field)
    _, create_time, update_time = _row(db, short, name)
    (count,) = db.execute("SELECT COUNT(*) FROM model_versions WHERE registered_model = ?", (short,)).fetchone()
    out = models_pb2.RegisteredModel(
        name=f"{COLLECTION}/{short}", version_count=count, create_time=_timestamp(create_time), update_time=_timestamp(update_time)
    )
    latest = _latest(db, short)
    if latest is not None:
        out.latest_version, out.latest_model = latest[0], f"models/{latest[1]}"
        out.aliases[LATEST] = latest[0]
    for alias, version in db.execute("SELECT alias, version FROM model_aliases WHERE registered_model = ?", (short,)):
        out.aliases[alias] = version
    return out


def set_alias(db: sqlite3.Connection, name: str, alias: str, version: int, now: float) -> None:
    short = plain_name(name, "name")
    check_alias(alias, "alias")
    _row(db, short, name)
    if not db.execute("SELECT 1 FROM model_versions WHERE registered_model = ? AND version = ?", (short, version)).fetchall():
        raise errors.NotFound(f"version {version} of registered model '{COLLECTION}/{short}' not found", field="version")
    db.execute("INSERT OR REPLACE INTO model_aliases (registered_model, alias, version) VALUES (?, ?, ?)", (short, alias, version))
    db.execute("UPDATE registered_models SET update_time = ? WHERE name = ?", (now, short))


def delete_alias(db: sqlite3.Connection, name: str, alias: str, now: float) -> None:
    short = plain_name(name, "name")
    if alias == LATEST:
        raise errors.InvalidArgument("'latest' cannot be removed: it always points at the newest version", field="alias")
    _row(db, short, name)
    if db.execute("DELETE FROM model_aliases WHERE registered_model = ? AND alias = ?", (short, alias)).rowcount == 0:
        raise errors.NotFound(f"alias {alias!r} of registered model '{COLLECTION}/{short}' not found", field="alias")
    db.execute("UPDATE registered_models SET update_time = ? WHERE name = ?", (now, short))


def decorate(db: sqlite3.Connection, model: models_pb2.Model) -> None:
    """Fills a stored Model's registry fields (30-33), which change after it was written."""
    model_id = model.name.split("/", 1)[1]
    row = db.execute("SELECT registered_model, version FROM model_versions WHERE model_id = ?", (model_id,)).fetchone()
    if row is not None:
        short, version = row
        model.registered_model, model.version = f"{COLLECTION}/{short}", version
        aliases = sorted(a for (a,) in db.execute(
            "SELECT alias FROM model_aliases WHERE registered_model = ? AND version = ?", (short, version)))
        latest = _latest(db, short)
        if latest is not None and latest[0] == version:
            aliases.insert(0, LATEST)
        model.aliases[:] = aliases
    batching = db.execute("SELECT proto FROM model_batching WHERE model_id = ?", (model_id,)).fetchone()
    if batching is not None:
        model.dynamic_batching.ParseFromString(batching[0])
