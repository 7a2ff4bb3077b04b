"""The Spark engine: a SparkSession behind the part of DuckDB's connection API the lake's steps use.

The clean functions (clean_orders, clean_order_products, clean_products, clean_dimension) and the
feature build (features/build.py) take a connection and run their DuckDB SQL on it. SparkConnection runs each statement on Spark instead,
transpiled by lake/engines.py, so both engines execute one definition of every step. Only this
module and the Spark job import pyspark.

The same code runs on the local PySpark (4.x) and on EMR Serverless's emr-7.9.0 (Apache Spark 3.5.5),
so it keeps to APIs both have: DataFrame reads and writes, temp views, localCheckpoint, pandas UDFs,
and, through the py4j gateway (`spark._jvm`), Hadoop's FileSystem and parquet-mr (1.13 on EMR 7.9,
1.17 here) for the one-file outputs and footer reads. No Spark Connect, no VARIANT functions
(try_parse_json is 4.0 only: see JSON_VALID in lake/engines.py), no 4.0 SQL syntax (SQLGlot writes
CAST, not `::`).
"""

from __future__ import annotations

import json
import os
import sys
import unicodedata
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.functions import pandas_udf
from sqlglot import exp

from instarec_assets.lake.clean_steps import LOCAL_SPARK_MASTER
from instarec_assets.lake.engines import (
    JSON_VALID_UDF,
    NFC_NORMALIZE_UDF,
    EngineError,
    parse_duckdb,
    spark_sql,
    update_as_select,
)
from instarec_assets.lake.staging import is_uri

# Files as DuckDB writes them: TIMESTAMPTZ is parquet INT64 micros adjusted to UTC (Spark's
# default is INT96), zstd compressed.
SPARK_CONF: dict[str, str] = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    "spark.sql.parquet.compression.codec": "zstd",
}
_CONSTRAINT_PROPAGATION = "spark.sql.constraintPropagation.enabled"

# Small shuffles and no UI: the local engine runs on a laptop's cores; EMR sets its own. The driver
# is the whole local engine: with 1g the 40,000-user feature build failed to broadcast a join table
# (bench_engines.py, 2026-12-06); 4g is a ceiling on the JVM heap, not an allocation.
LOCAL_SPARK_CONF: dict[str, str] = {
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.shuffle.partitions": "4",
    "spark.driver.memory": "4g",
}


@contextmanager
def _console_to(log: Path) -> Iterator[None]:
    """Points this process's stdout and stderr at `log` while the block runs: the JVM that pyspark
    starts inherits them, so its console (log4j, the JDK's warnings) goes to the file for good."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = (os.dup(1), os.dup(2))
    try:
        with log.open("ab") as out:
            os.dup2(out.fileno(), 1)
            os.dup2(out.fileno(), 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


def spark_session(
    master: str | None = LOCAL_SPARK_MASTER, app_name: str = "instarec-clean", jvm_log: Path | None = None
) -> SparkSession:
    """A local-mode session (`master`, for tests and `--engine spark` on one machine), or with no
    master the cluster's own (spark-submit, EMR). The Python workers (nfc_normalize) run
    PYSPARK_PYTHON, which must be an interpreter with this package: the launcher sets it.
    `jvm_log`: where a JVM started here writes its console (else this process's stdout/stderr)."""
    builder = SparkSession.builder.appName(app_name)
    if master:
        builder = builder.master(master)
        for key, value in LOCAL_SPARK_CONF.items():
            builder = builder.config(key, value)
    for key, value in SPARK_CONF.items():
        builder = builder.config(key, value)
    with _console_to(jvm_log) if jvm_log is not None else nullcontext():
        spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def _nfc(values: pd.Series) -> pd.Series:
    return values.map(lambda value: None if value is None else unicodedata.normalize("NFC", value))


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _is_json(value: str | None) -> bool | None:
    if value is None:
        return None
    try:
        json.loads(value, parse_constant=_reject_constant)  # NaN, Infinity: Python only, not JSON
    except ValueError:
        return False
    return True


def _json_valid(values: pd.Series) -> pd.Series:
    return values.map(_is_json).astype("boolean")


def register_functions(spark: SparkSession) -> None:
    """The functions the lake's SQL needs that Spark lacks (engines.SPARK_EXPRESSIONS says which)."""
    spark.udf.register(NFC_NORMALIZE_UDF, pandas_udf(_nfc, "string"))
    spark.udf.register(JSON_VALID_UDF, pandas_udf(_json_valid, "boolean"))


def _as_uri(location: str) -> str:
    """A URI as is, a local path as its file:// URI (Hadoop's FileSystem takes either spelled so)."""
    return location if is_uri(location) else f"file://{Path(location).absolute()}"


def _hadoop_path(spark: SparkSession, uri: str):
    """The Hadoop FileSystem (EMRFS for s3:// on EMR, the local one for file://) and Path of `uri`."""
    path = spark._jvm.org.apache.hadoop.fs.Path(uri)
    return path.getFileSystem(spark._jsc.hadoopConfiguration()), path


def read_text(spark: SparkSession, uri: str) -> str:
    """A whole small text file at a URI or path (the step's request), through Hadoop's FileSystem:
    Spark's readers skip files whose names start with `_`, as `_request.json` does."""
    fs, path = _hadoop_path(spark, uri)
    if not fs.exists(path):
        raise FileNotFoundError(f"{uri} does not exist")
    buffer = spark._jvm.java.io.ByteArrayOutputStream()
    spark._jvm.org.apache.hadoop.io.IOUtils.copyBytes(fs.open(path), buffer, 65536, True)
    return buffer.toString("UTF-8")


def write_text(spark: SparkSession, uri: str, text: str) -> None:
    """A small text file at a URI (the step's result), one object, replaced if there."""
    fs, path = _hadoop_path(spark, uri)
    stream = fs.create(path, True)
    try:
        stream.write(bytearray(text.encode()))
    finally:
        stream.close()


class _Relation:
    def __init__(self, spark: SparkSession, frame: DataFrame) -> None:
        self._frame = frame

    def create_view(self, name: str, replace: bool = True) -> None:
        self._frame.createOrReplaceTempView(name)


class _Result:
    def __init__(self, rows: list[tuple]) -> None:
        self._rows = rows

    def fetchall(self) -> list[tuple]:
        return self._rows


class SparkConnection:
    """Runs DuckDB statements on Spark: temp tables and views become temp views, UPDATEs and INSERTs
    replace the view with its new contents, COPY ... TO writes one parquet file."""

    def __init__(self, spark: SparkSession) -> None:
        self.spark = spark
        register_functions(spark)

    def read_parquet(self, uris: str | Sequence[str], hive_partitioning: bool = False) -> _Relation:
        paths = [uris] if isinstance(uris, str) else list(uris)
        return _Relation(self.spark, self.spark.read.parquet(*paths))

    def sql(self, sql: str) -> _Relation:
        (statement,) = parse_duckdb(sql)
        return _Relation(self.spark, self.spark.sql(spark_sql(statement)))

    def execute(self, sql: str, params: Sequence[Any] | Mapping[str, Any] | None = None) -> _Result:
        rows: list[tuple] = []
        for statement in parse_duckdb(sql, params):
            with self._union_safe(statement):
                rows = self._run(statement)
        return _Result(rows)

    @contextmanager
    def _union_safe(self, statement: exp.Expression) -> Iterator[None]:
        """Constraint propagation off while a statement with a SQL UNION runs: Spark 4.3's constraint
        rewrite of a UNION fails ("key not found: product_id#...") when a branch reads a checkpointed
        view (the incremental update's merges). Only there: elsewhere its inferred filters stay."""
        if statement.find(exp.Union) is None:
            yield
            return
        previous = self.spark.conf.get(_CONSTRAINT_PROPAGATION, "true")
        self.spark.conf.set(_CONSTRAINT_PROPAGATION, "false")
        try:
            yield
        finally:
            self.spark.conf.set(_CONSTRAINT_PROPAGATION, previous)

    def _run(self, statement: exp.Expression) -> list[tuple]:
        if isinstance(statement, exp.Create):
            self._create(statement)
        elif isinstance(statement, exp.Update):
            target = statement.this.name
            select = update_as_select(statement, self.spark.table(target).columns)
            self.spark.sql(spark_sql(select)).localCheckpoint().createOrReplaceTempView(target)
        elif isinstance(statement, exp.Insert):
            self._insert(statement)
        elif isinstance(statement, exp.Drop):
            self.spark.catalog.dropTempView(statement.find(exp.Table).name)
        elif isinstance(statement, exp.Copy):
            self._copy(statement)
        elif isinstance(statement, exp.Alter):
            self._rename(statement)
        elif isinstance(statement, exp.Query):
            return [tuple(row) for row in self.spark.sql(spark_sql(statement)).collect()]
        else:
            raise EngineError(f"the Spark engine does not run {statement.key.upper()} statements")
        return []

    def _create(self, create: exp.Create) -> None:
        if isinstance(create.this, exp.Schema):  # CREATE TABLE t (column type, ...): empty
            table = create.this.this.name
            columns = [
                exp.alias_(exp.cast(exp.null(), column.args["kind"]), column.name)
                for column in create.this.expressions
            ]
            frame = self.spark.sql(spark_sql(exp.select(*columns).where(exp.false())))
        else:
            table = create.this.name
            frame = self.spark.sql(spark_sql(create.expression))
        if str(create.args.get("kind", "")).upper() == "TABLE":
            frame = frame.localCheckpoint()  # a table is computed once, as DuckDB's is
        frame.createOrReplaceTempView(table)

    def _rename(self, alter: exp.Alter) -> None:
        """ALTER TABLE t RENAME TO u: the same (checkpointed) rows under the new name."""
        actions = alter.args.get("actions") or []
        if len(actions) != 1 or not isinstance(actions[0], exp.AlterRename):
            raise EngineError("the Spark engine runs no ALTER statement but ALTER TABLE ... RENAME TO ...")
        source, target = alter.this.name, actions[0].this.name
        self.spark.table(source).createOrReplaceTempView(target)
        self.spark.catalog.dropTempView(source)

    def parquet_kv_metadata(self, uri: str) -> dict[str, str]:
        """A parquet file's footer key-value metadata (DuckDB's parquet_kv_metadata, which Spark SQL
        lacks), read by parquet-mr."""
        _, path = _hadoop_path(self.spark, _as_uri(uri))
        hadoop = self.spark._jvm.org.apache.parquet.hadoop
        conf = self.spark._jsc.hadoopConfiguration()
        reader = hadoop.ParquetFileReader.open(hadoop.util.HadoopInputFile.fromPath(path, conf))
        try:
            return dict(reader.getFooter().getFileMetaData().getKeyValueMetaData())
        finally:
            reader.close()

    def _insert(self, insert: exp.Insert) -> None:
        """INSERT INTO a temp table (a SELECT, no column list): the view becomes the union of its rows
        and the new ones, each column cast to the table's type by position, as DuckDB's INSERT casts."""
        if isinstance(insert.this, exp.Schema):
            raise EngineError("the Spark engine inserts whole rows only (INSERT INTO t SELECT ...)")
        target = insert.this.name
        table = self.spark.table(target)
        rows = self.spark.sql(spark_sql(insert.expression))
        if len(rows.columns) != len(table.columns):
            raise EngineError(f"INSERT INTO {target}: {len(rows.columns)} columns for {len(table.columns)}")
        rows = rows.toDF(*table.columns)
        typed = rows.select(*(rows[field.name].cast(field.dataType) for field in table.schema))
        table.unionAll(typed).localCheckpoint().createOrReplaceTempView(target)

    def _copy(self, copy: exp.Copy) -> None:
        """One zstd parquet file at the step's staging location (a local path, or a URI): Spark
        writes the table's part files in parallel, then merge_parts joins them into that file."""
        (target,) = copy.args["files"]
        frame = self.spark.sql(spark_sql(copy.this.this))
        uri = _as_uri(target.name)
        folder, _, name = uri.rpartition("/")
        parts = f"{folder}/.{name}.{uuid.uuid4().hex}.spark"
        frame.write.mode("overwrite").parquet(parts)
        merge_parts(self.spark, parts, uri)


# Row groups are copied as Spark wrote them (128 MiB each by default), never padded to a block size.
_MERGE_ROW_GROUP_BYTES = 128 * 1024 * 1024


def _part_index(path) -> int:
    """Spark's task number in a part file's name (part-00012-<uuid>-c000.zstd.parquet)."""
    return int(path.getName().split("-")[1])


def merge_parts(spark: SparkSession, parts: str, target: str) -> None:
    """Spark's part files in the folder `parts`, joined in task order into one parquet file at
    `target` (so a sorted frame stays sorted), and the folder removed. One part is renamed (on S3 a
    server-side copy). More are joined by parquet-mr's ParquetFileWriter.appendFile, which copies
    each row group's bytes without decoding them: the lake keeps one file per table and batch while
    the stages before the write stay parallel (coalesce(1) would have narrowed them to one task)."""
    jvm = spark._jvm
    conf = spark._jsc.hadoopConfiguration()
    fs, parts_path = _hadoop_path(spark, parts)
    written = sorted(
        (
            status.getPath()
            for status in fs.listStatus(parts_path)
            if status.getPath().getName().startswith("part-")
        ),
        key=_part_index,
    )
    if not written:
        raise EngineError(f"Spark wrote no part file for {target}")
    _, target_path = _hadoop_path(spark, target)
    fs.delete(target_path, False)
    if len(written) == 1:
        if not fs.rename(written[0], target_path):
            raise EngineError(f"could not move the Spark output {written[0].toString()} to {target}")
    else:
        hadoop = jvm.org.apache.parquet.hadoop
        input_file = hadoop.util.HadoopInputFile
        reader = hadoop.ParquetFileReader.open(input_file.fromPath(written[0], conf))
        try:
            file_metadata = reader.getFooter().getFileMetaData()
        finally:
            reader.close()
        # Hadoop's local FileSystem would write a .crc file beside a local target; its raw one does not.
        out_conf = jvm.org.apache.hadoop.conf.Configuration(conf)
        out_conf.set("fs.file.impl", "org.apache.hadoop.fs.RawLocalFileSystem")
        out_conf.setBoolean("fs.file.impl.disable.cache", True)
        writer = hadoop.ParquetFileWriter(
            hadoop.util.HadoopOutputFile.fromPath(target_path, out_conf),
            file_metadata.getSchema(),
            getattr(hadoop, "ParquetFileWriter$Mode").OVERWRITE,
            _MERGE_ROW_GROUP_BYTES,
            0,
        )
        try:
            writer.start()
            for part in written:
                writer.appendFile(input_file.fromPath(part, conf))
            writer.end(jvm.java.util.HashMap(file_metadata.getKeyValueMetaData()))
        except Exception:
            fs.delete(target_path, False)
            raise
    fs.delete(parts_path, True)
