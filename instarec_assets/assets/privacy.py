"""The `forget_shopper` job: one op that forgets a shopper (or withdraws the request), visible in the UI.

Thin: `instarec_assets.privacy.forget` does the work; the op reads the lake, the serving store and
the salt from its resources and reports what was rewritten as metadata. It runs in the
`lake_history` pool, so it never rewrites a file while a landing run reads or writes the history.
"""

from pathlib import Path

from dagster import Config, MetadataValue, OpExecutionContext, Out, Output, job, op

from instarec_assets.lake.locations import LakeLocations
from instarec_assets.partitions import HISTORY_POOL
from instarec_assets.privacy.analyst_tables import AnalystTables
from instarec_assets.privacy.forget import ForgetOutcome, forget_user, os_user, withdraw_request
from instarec_assets.resources import AnalystCatalogResource, LakeResource, ServingStoreResource
from instarec_assets.warehouse.masked import glue_client
from instarec_assets.warehouse.salt import load_salt

FORGET_JOB_NAME = "forget_shopper"


class ForgetShopperConfig(Config):
    """Whom to forget, why and for whom; `withdraw` lifts an earlier request instead."""

    user_id: int
    reason: str = ""
    requested_by: str = ""
    withdraw: bool = False


@op(
    name="forget_shopper_op",
    out=Out(dict, description="The audit record written, and its URI."),
    pool=HISTORY_POOL,
    tags={"privacy": "forget"},
)
def forget_shopper_op(
    context: OpExecutionContext,
    config: ForgetShopperConfig,
    lake: LakeResource,
    serving_store: ServingStoreResource,
    analyst_catalog: AnalystCatalogResource,
) -> Output[dict]:
    """Remove the user from every zone, the landing copies, the warehouse (in aws mode with an
    analysts' bucket, its masked tables on S3 and in Glue) and the serving store."""
    locations = lake.locations
    salt = load_salt(locations.home_path).value
    requested_by = config.requested_by or os_user()
    if config.withdraw:
        outcome = withdraw_request(
            locations, config.user_id, salt=salt, requested_by=requested_by, reason=config.reason
        )
    else:
        exists = serving_store.kind != "sqlite" or Path(serving_store.sqlite_path).exists()
        outcome = forget_user(
            locations,
            config.user_id,
            salt=salt,
            requested_by=requested_by,
            reason=config.reason,
            store=serving_store.open() if exists else None,
            analyst=_analyst_tables(locations, analyst_catalog),
            progress=context.log.info,
        )
    return Output(
        {"audit_uri": outcome.audit_uri, "record": outcome.record.to_json()}, metadata=_metadata(outcome)
    )


def _analyst_tables(locations: LakeLocations, catalog: AnalystCatalogResource) -> AnalystTables | None:
    """The analysts' masked tables, where the pipeline publishes them (aws mode with a bucket)."""
    if not (locations.is_aws and catalog.bucket):
        return None
    glue = glue_client(locations.region, locations.endpoint_url)
    return AnalystTables(catalog.bucket, catalog.database, glue)


def _metadata(outcome: ForgetOutcome) -> dict[str, MetadataValue]:
    """What the UI shows: the audit record's place and its counts; never the user id."""
    record = outcome.record
    rows = "\n".join(
        f"| {item.kind} | `{item.target}` | {item.rows_removed:,} | {item.noncurrent_versions_deleted} |"
        for item in record.rewritten
    )
    models = "\n".join(
        f"| {m.model} | {m.version} | {m.partition} |" for m in record.models_trained_with_user
    )
    return {
        "action": MetadataValue.text(record.action),
        "user_hash": MetadataValue.text(record.user_hash),
        "audit_record": MetadataValue.path(outcome.audit_uri),
        "rows_removed": MetadataValue.int(record.rows_removed),
        "rewritten": MetadataValue.md(
            "| kind | target | rows removed | noncurrent versions deleted |\n| --- | --- | ---: | ---: |\n"
            + rows
        ),
        "models_trained_with_user": MetadataValue.md(
            "| model | version | fitted on batch |\n| --- | --- | --- |\n" + models if models else "_none_"
        ),
    }


@job(
    name=FORGET_JOB_NAME,
    description=(
        "Forget a shopper (run config: user_id, reason, requested_by; withdraw: true lifts a request): "
        "rewrites every lake file, landing copy, the warehouse (or the analysts' masked tables on S3) and "
        "the serving store without them, and "
        "appends an audit record under <raw zone>/privacy/forget_requests/. `instarec forget` runs it."
    ),
)
def forget_shopper() -> None:
    forget_shopper_op()
