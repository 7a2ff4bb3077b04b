"""The lake's and the features' DuckDB SQL as Spark SQL: SQLGlot transpiles it, with a few rewrites.

The SQL is written once, for DuckDB (lake/clean_*.py, dedup.py, validation.py, quarantine.py, and the
feature SQL in features/). The Spark engine runs the same statements: each is parsed as DuckDB, its
parameters bound as literals, the functions and types in SPARK_EXPRESSIONS rewritten, and UPDATEs
turned into SELECTs (Spark's temp views cannot be updated), then printed as Spark SQL.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlglot
from sqlglot import exp

DUCKDB = "duckdb"
SPARK = "spark"

# Extension names a Spark job registers before it runs the SQL (see lake/spark_connection.py).
NFC_NORMALIZE_UDF = "nfc_normalize"
JSON_VALID_UDF = "json_valid"

# The column an UPDATE rewritten as a LEFT JOIN uses to tell matched rows.
_MATCHED = "__updated"


class EngineError(ValueError):
    """A statement the Spark side cannot run."""


@dataclass(frozen=True)
class SparkExpression:
    """A DuckDB function that Spark lacks or spells with other semantics, and what replaces it."""

    why: str
    rewrite: Callable[[exp.Expression], exp.Expression]


def _function_args(node: exp.Expression) -> list[exp.Expression]:
    if isinstance(node, exp.Anonymous):
        return list(node.expressions)
    return [arg for arg in (node.this, *node.expressions) if arg is not None]


def _call(name: str, *args: exp.Expression) -> exp.Expression:
    return exp.Anonymous(this=name, expressions=list(args))


def _full_match(node: exp.Expression) -> exp.Expression:
    text, pattern = node.this, node.expression
    return exp.RegexpLike(this=text, expression=exp.Literal.string(f"^(?:{pattern.name})\\z"))


def _floor(node: exp.Expression) -> exp.Expression:
    value = node.this
    return exp.paren(
        exp.Sub(this=value.copy(), expression=_call("pmod", value.copy(), exp.Literal.number(1)))
    )


def _to_json(node: exp.Expression) -> exp.Expression:
    options = _call("map", exp.Literal.string("ignoreNullFields"), exp.Literal.string("false"))
    return _call("to_json", *_function_args(node), options)


def _parquet_table(path: exp.Expression) -> exp.Table:
    if not isinstance(path, exp.Literal) or not path.is_string:
        raise EngineError(f"read_parquet of {path.sql(DUCKDB)}: Spark SQL reads literal paths")
    return exp.Table(this=exp.to_identifier(path.name, quoted=True), db=exp.to_identifier("parquet"))


def _read_parquet(table: exp.Expression) -> exp.Expression:
    """`FROM read_parquet('<file>' or ['<file>', ...], ...)` (the whole table node) as
    `FROM parquet.`<file>`` or, for a list, the UNION ALL of the files (by position, as DuckDB reads
    a list of files without union_by_name)."""
    path = table.this.expressions[0]
    alias = table.args.get("alias")
    if not isinstance(path, exp.Array):
        parquet = _parquet_table(path)
        parquet.set("alias", alias)
        return parquet
    files = [exp.select("*").from_(_parquet_table(item)) for item in path.expressions]
    if not files:
        raise EngineError("read_parquet of an empty list: there is no file to read")
    union = files[0]
    for select in files[1:]:
        union = exp.union(union, select, distinct=False)
    return exp.Subquery(this=union, alias=alias or exp.TableAlias(this=exp.to_identifier("files")))


def _ordered_first(node: exp.Expression) -> exp.Expression:
    """`first(x ORDER BY k1 DESC, k2)` as `min_by(x, named_struct('k0', -k1, 'k1', k2))`: the keys
    compare as a struct, field by field; DESC keys must be numbers (negated) and never NULL."""
    order = node.this
    if not isinstance(order, exp.Order):
        return node  # first(x) without ORDER BY: Spark's first, as SQLGlot writes it
    fields: list[exp.Expression] = []
    for index, ordered in enumerate(order.expressions):
        key = ordered.this.copy()
        fields += [
            exp.Literal.string(f"k{index}"),
            exp.Neg(this=exp.paren(key)) if ordered.args.get("desc") else key,
        ]
    return _call("min_by", order.this.copy(), _call("named_struct", *fields))


def _percentile_disc(node: exp.Expression) -> exp.Expression:
    """DuckDB's `quantile_disc(x, q)` as the standard `percentile_disc(q) WITHIN GROUP (ORDER BY x)`."""
    return exp.WithinGroup(
        this=_call("percentile_disc", node.expression.copy()),  # not exp.PercentileDisc: SQLGlot writes
        # that as Spark 2's approximate percentile_approx
        expression=exp.Order(expressions=[exp.Ordered(this=node.this.copy(), nulls_first=False)]),
    )


def _signed(node: exp.Expression) -> exp.Expression:
    return exp.DataType.build("BIGINT") if node.this == exp.DataType.Type.UBIGINT else node


# Keyed by the DuckDB function's (or type's) name, upper case, as SQLGlot parses it (quantile_disc is
# PERCENTILE_DISC). Every other function transpiles as SQLGlot writes it.
SPARK_EXPRESSIONS: dict[str, SparkExpression] = {
    "REGEXP_FULL_MATCH": SparkExpression(
        "Spark has no full-match function; RLIKE finds, so the pattern is anchored (\\z: no final newline).",
        _full_match,
    ),
    "FLOOR": SparkExpression(
        "Spark's floor of a DOUBLE is a BIGINT (it overflows past 2^63); x - pmod(x, 1) stays a DOUBLE.",
        _floor,
    ),
    "HASH": SparkExpression(
        "Spark's hash is 32-bit murmur3; xxhash64 compares row contents with DuckDB's 64-bit odds.",
        lambda node: _call("xxhash64", *_function_args(node)),
    ),
    "ORD": SparkExpression(
        "Spark has no ord; its ascii gives the first character's code point.",
        lambda node: _call("ascii", *_function_args(node)),
    ),
    "TO_JSON": SparkExpression(
        "Spark's to_json leaves out null fields unless told; DuckDB writes them as null.",
        _to_json,
    ),
    JSON_VALID_UDF.upper(): SparkExpression(
        "Spark has no json_valid, and try_parse_json is Spark 4 only (EMR's emr-7.9.0 runs 3.5): the "
        "job registers json_valid (Python's strict json parser, NaN and Infinity refused as DuckDB does).",
        lambda node: _call(JSON_VALID_UDF, *_function_args(node)),
    ),
    "READ_PARQUET": SparkExpression(
        "A parquet file as a table is parquet.`path` in Spark SQL.",
        _read_parquet,
    ),
    "FIRST": SparkExpression(
        "Spark's first has no ORDER BY (its pick is arbitrary); min_by over a struct of the keys is exact.",
        _ordered_first,
    ),
    "PERCENTILE_DISC": SparkExpression(
        "DuckDB's quantile_disc(x, q) is Spark's percentile_disc(q) WITHIN GROUP (ORDER BY x): same value "
        "(the smallest whose cumulative share reaches q), other syntax.",
        _percentile_disc,
    ),
    "UBIGINT": SparkExpression(
        "Spark has no unsigned types; the feature bit masks hold 63 bits, so BIGINT holds them.",
        _signed,
    ),
    NFC_NORMALIZE_UDF.upper(): SparkExpression(
        "Spark has no Unicode normalisation built in: the job registers nfc_normalize (Python's unicodedata).",
        lambda node: node,
    ),
}


def _function_name(node: exp.Expression) -> str | None:
    if isinstance(node, exp.DataType):
        return node.this.name
    if isinstance(node, exp.Anonymous):
        return str(node.this).upper()
    if isinstance(node, exp.Func):
        return node.sql_name().upper()
    return None


def _rewrite_functions(node: exp.Expression) -> exp.Expression:
    if isinstance(node, exp.Table) and isinstance(node.this, exp.Func):  # a table function
        name = _function_name(node.this)
    else:
        name = _function_name(node)
    spark_expression = SPARK_EXPRESSIONS.get(name) if name else None
    return spark_expression.rewrite(node) if spark_expression else node


def _literal(value: Any) -> exp.Expression:
    if isinstance(value, (list, tuple, set, frozenset)):
        return exp.Array(expressions=[_literal(item) for item in value])
    return exp.convert(value)


def bind_parameters(
    statement: exp.Expression, params: Sequence[Any] | Mapping[str, Any] | None
) -> exp.Expression:
    """`?` and `$name` placeholders replaced by literals (the values are the pipeline's own: paths,
    the forget list's hashes, its salt)."""
    if not params:
        return statement
    positional = iter(params) if not isinstance(params, Mapping) else None

    def bind(node: exp.Expression) -> exp.Expression:
        if not isinstance(node, exp.Placeholder):
            return node
        if positional is not None:
            return _literal(next(positional))
        return _literal(params[node.name])

    return statement.transform(bind)


def parse_duckdb(sql: str, params: Sequence[Any] | Mapping[str, Any] | None = None) -> list[exp.Expression]:
    """The DuckDB statements of `sql`, parameters bound and Spark's function rewrites applied."""
    statements = [statement for statement in sqlglot.parse(sql, read=DUCKDB) if statement is not None]
    return [bind_parameters(statement, params).transform(_rewrite_functions) for statement in statements]


def to_spark(sql: str, params: Sequence[Any] | Mapping[str, Any] | None = None) -> list[str]:
    """Each statement of a DuckDB `sql` as Spark SQL (what the Spark engine runs)."""
    return [statement.sql(SPARK) for statement in parse_duckdb(sql, params)]


def spark_sql(node: exp.Expression) -> str:
    return node.sql(SPARK)


def update_as_select(update: exp.Update, columns: Sequence[str]) -> exp.Select:
    """An UPDATE of a table with `columns`, as the SELECT of the table's new contents.

    With FROM, the source joins the target on the WHERE condition, so the source must match each
    target row at most once, as in every UPDATE of the lake (a key, or a de-duplicated set of keys).
    """
    target = update.this
    alias = target.alias_or_name
    assignments = {eq.this.name: eq.expression for eq in update.expressions}
    condition = update.args["where"].this if update.args.get("where") else exp.true()
    source = update.args.get("from_") or update.args.get("from")
    if source is not None:
        source_table = source.this
        source_alias = source_table.alias_or_name
        marked = exp.select("*", exp.alias_(exp.true(), _MATCHED)).from_(_unaliased(source_table))
        matched = exp.func("coalesce", exp.column(_MATCHED, table=source_alias), exp.false())
        joined = exp.select(*_assigned_columns(columns, assignments, alias, matched)).from_(target.copy())
        return joined.join(marked.subquery(source_alias), on=condition, join_type="left")
    matched = exp.func("coalesce", exp.paren(condition), exp.false())
    return exp.select(*_assigned_columns(columns, assignments, alias, matched)).from_(target.copy())


def _unaliased(table: exp.Expression) -> exp.Expression:
    """The FROM source of an UPDATE without its alias (a table, or a subquery's query)."""
    if isinstance(table, exp.Subquery):
        return exp.Subquery(this=table.this.copy())
    return exp.Table(this=table.this.copy(), db=table.args.get("db"))


def _assigned_columns(
    columns: Sequence[str], assignments: Mapping[str, exp.Expression], alias: str, matched: exp.Expression
) -> list[exp.Expression]:
    selected = []
    for column in columns:
        old = exp.column(column, table=alias, quoted=True)
        if column in assignments:
            new = exp.Case(ifs=[exp.If(this=matched.copy(), true=assignments[column].copy())], default=old)
            selected.append(exp.alias_(new, column, quoted=True))
        else:
            selected.append(old)
    return selected
