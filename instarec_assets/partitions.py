"""The one partitioning of every zone table: the landing date of a batch (YYYY-MM-DD, UTC)."""

from dagster import DailyPartitionsDefinition

PARTITIONS_START_DATE = "2024-01-01"

# end_offset=1 makes today's date a valid partition, so a batch landed today can be processed today.
landing_date_partitions = DailyPartitionsDefinition(
    start_date=PARTITIONS_START_DATE, end_offset=1, timezone="UTC"
)
