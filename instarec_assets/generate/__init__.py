"""Deterministic synthetic grocery order history in the exact public Instacart (Kaggle 2017) format.

The real order files cannot be shipped, so `generate_dataset` stands in for them: it writes dated
landing folders (a full snapshot, then weekly increments) whose structure matches the real dataset's
published figures, using the real product catalog shipped in `data/`.
"""

from .catalog import CatalogChanges
from .dataset import FILES, SUCCESS_MARKER, BatchSummary, GenerateSummary, generate_dataset

__all__ = ["FILES", "SUCCESS_MARKER", "BatchSummary", "CatalogChanges", "GenerateSummary", "generate_dataset"]
