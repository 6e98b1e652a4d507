"""Statements handed to the database driver directly, each compiled by SQLAlchemy once.

The store transactions (a group of sends, a batch of received envelopes, the
receipts of a delivery) end with a list of writes (``db.write_pipelined``,
``db.commit_pipelined``): one ``INSERT`` per table, an ``UPDATE`` or two.
Through SQLAlchemy's ``Connection.execute`` each write costs a compiled-cache
lookup, an execution context, events and a result object: for the one or few
rows of a write, about as much CPU as the driver's own work again
(``bench/bench_store.py``). Here each (statement, the rows' keys, one row or
several) is compiled once, as ``Connection.execute`` would compile it, into the
driver's SQL and a recipe for the driver's parameters: per value, the bind
processor SQLAlchemy would apply (an aware datetime made UTC, or naive on
SQLite; a dict serialised for a JSON column), and the values the statement
carries itself (``insert(...).values(state="queued")``).

The reads a node makes on every request or store transaction (``db.loop_fetchall``,
``db.read_together``) go the same way, their rows read back as the driver gives them.

A statement whose execution SQLAlchemy would change beyond that is left to
SQLAlchemy (``driver_form`` returns ``None``): one whose rows leave a column to a
Python-side default, one with an expanding (``IN``) or literal-rendered
parameter, escaped parameter names, a parameter computed per execution, or rows
without a value the statement requires (SQLAlchemy raises its own error for
that), or rows that do not all have the same keys; and, for a write, one that
returns rows (``DriverForm.returns_rows``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy.engine import Dialect
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.dml import UpdateBase
from sqlalchemy.sql.elements import BindParameter
from sqlalchemy.sql.selectable import Select

#: A write's parameters as SQLAlchemy takes them: one row (a mapping) or several (a list of them).
Parameters = Mapping[str, Any] | Sequence[Mapping[str, Any]]


@dataclass(frozen=True)
class _Bind:
    name: str  # the parameter's name in the driver's SQL
    key: str | None  # the row key its value comes from, or None: the statement's own value (``constant``)
    process: Callable[[Any], Any] | None  # SQLAlchemy's bind processor for its type, if it has one
    constant: Any  # the statement's own value, processed (only without ``key``)


@dataclass(frozen=True, eq=False)  # (one per compiled statement: compared and hashed by identity)
class DriverForm:
    """A write as the driver takes it: ``sql`` and how to make its parameters from the rows."""

    sql: str
    binds: tuple[_Bind, ...]
    positional: bool  # the driver's parameters are a sequence in ``binds`` order (SQLite), else a mapping
    returns_rows: bool  # a SELECT, or RETURNING: a read (``read_form``), not a write (``driver_form``)

    def parameters(self, rows: Sequence[Mapping[str, Any]]) -> list[Any]:
        """One set of driver parameters per row."""
        made: list[Any] = []
        for row in rows:
            values = [
                bind.constant
                if bind.key is None
                else bind.process(row[bind.key])
                if bind.process is not None
                else row[bind.key]
                for bind in self.binds
            ]
            made.append(values if self.positional else dict(zip(self._names, values, strict=True)))
        return made

    @functools.cached_property
    def _names(self) -> tuple[str, ...]:
        return tuple(bind.name for bind in self.binds)


def rows_of(parameters: Parameters) -> list[Mapping[str, Any]]:
    """A write's rows: one for a mapping, each of a list."""
    return [parameters] if isinstance(parameters, Mapping) else list(parameters)


def driver_form(dialect: Dialect, statement: object, rows: Sequence[Mapping[str, Any]]) -> DriverForm | None:
    """Write ``statement`` with ``rows`` as the driver would run it from ``Connection.execute``, or ``None``
    to leave it to SQLAlchemy (see the module's docstring; a statement that returns rows is no write).
    Compiled once per statement, the rows' keys, and whether there is one row or several."""
    form = _form(dialect, statement, rows)
    return None if form is None or form.returns_rows else form


def read_form(dialect: Dialect, statement: object, params: Mapping[str, Any]) -> DriverForm | None:
    """A read (a SELECT, or a write that returns rows: ``UPDATE ... RETURNING``) with ``params``, as
    ``driver_form`` makes a write's; ``None`` for one SQLAlchemy must run."""
    return _form(dialect, statement, [params])


def _form(dialect: Dialect, statement: object, rows: Sequence[Mapping[str, Any]]) -> DriverForm | None:
    if not rows or not isinstance(statement, UpdateBase | Select):
        return None
    keys = tuple(sorted(rows[0]))  # (as ``Connection.execute`` orders them for the compiled cache)
    if any(len(row) != len(keys) or any(k not in row for k in keys) for row in rows[1:]):
        return None
    return _compiled(dialect, statement, keys, len(rows) > 1)


@functools.lru_cache(maxsize=512)
def _compiled(
    dialect: Dialect, statement: UpdateBase | Select[Any], keys: tuple[str, ...], many: bool
) -> DriverForm | None:
    compiled = cast(
        SQLCompiler, statement.compile(dialect=dialect, column_keys=list(keys), for_executemany=many)
    )
    if (
        compiled.insert_prefetch
        or compiled.update_prefetch
        or compiled.post_compile_params
        or compiled.literal_execute_params
        or compiled.escaped_bind_names
        or getattr(compiled, "_insertmanyvalues", None) is not None
    ):
        return None
    by_name: dict[str, BindParameter[Any]] = {name: bind for bind, name in compiled.bind_names.items()}
    names = list(compiled.positiontup) if compiled.positional and compiled.positiontup else list(by_name)
    binds: list[_Bind] = []
    for name in names:
        bind = by_name[name]
        if bind.callable is not None:
            return None
        process = bind.type.dialect_impl(dialect).bind_processor(dialect)
        key = bind.key if bind.key in keys else name if name in keys else None  # (as ``construct_params``)
        if key is not None:
            binds.append(_Bind(name, key, process, None))
        elif bind.required:
            return None  # SQLAlchemy raises its own error for the missing value
        else:
            value = bind.effective_value
            binds.append(_Bind(name, None, None, process(value) if process is not None else value))
    returns_rows = isinstance(statement, Select) or bool(compiled.effective_returning)
    return DriverForm(compiled.string, tuple(binds), compiled.positional, returns_rows)
