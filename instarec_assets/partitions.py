"""The one partitioning of every zone table: the landing batches, keyed by their date (YYYY-MM-DD).

Partitions are the batches that actually landed (a dynamic partitions definition whose keys the
landing sensor and `instarec materialize` add), so any date works and the UI lists only real
batches. Reads of the history (every batch up to this one) are declared with `history_input`.
"""

from dagster import AllPartitionMapping, AssetIn, DynamicPartitionsDefinition

LANDING_BATCHES = "landing_batches"

landing_batches = DynamicPartitionsDefinition(name=LANDING_BATCHES)

# The steps that read or rewrite shared history (clean dedup, features, models, consumption) run in
# this Dagster concurrency pool; its limit (1 by default) lives in the instance's dagster.yaml.
HISTORY_POOL = "lake_history"

# Input metadata telling the IO manager what to load of a history dependency: every batch up to the
# run's partition (a list of URIs in date order), or only the run's own batch (one URI).
HISTORY_INPUT = "instarec/history_read"
THROUGH_PARTITION = "through_partition"
THIS_PARTITION = "this_partition"


def history_input(key: str) -> AssetIn:
    """An input of every batch of `key` up to the run's partition, as a list of URIs in date order.

    Dagster has no built-in mapping for "up to this partition" on dynamic partitions (and custom
    mappings are unsupported), so the dependency is declared on all partitions (an honest
    over-approximation: re-landing a batch marks every partition downstream of it stale, earlier
    ones included) and the IO manager loads only the batches up to the run's own.
    """
    return AssetIn(
        key=key, partition_mapping=AllPartitionMapping(), metadata={HISTORY_INPUT: THROUGH_PARTITION}
    )


def batch_input_with_history(key: str) -> AssetIn:
    """An input of the run's own batch of `key` (one URI) for a step whose result also depends on
    every earlier batch of it: a clean table deduplicated against its own past is a function of the
    raw history, so the raw table is declared with the history mapping and only this batch is read."""
    return AssetIn(key=key, partition_mapping=AllPartitionMapping(), metadata={HISTORY_INPUT: THIS_PARTITION})
