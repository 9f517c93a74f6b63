"""ServiceX delivery: the skim query from the analysis configuration, the delivery stage with
the real ``servicex`` client, and a local ServiceX-compatible endpoint (:mod:`utils.delivery.local`).

Importing this package is cheap; the servicex client is imported when a delivery runs.
"""

from utils.delivery.config import ServiceXTarget, default_local_config, read_target, resolve_target, write_local_config
from utils.delivery.deliver import (
    DeliveredFile,
    DeliveryResult,
    DeliveryStats,
    SampleDelivery,
    SkippedInput,
    deliver_fileset,
    read_delivered,
    transform_requests,
)
from utils.delivery.query import SkimDefinition, build_query, func_adl_source, skim_definition, uproot_raw_cut

__all__ = [
    "DeliveredFile",
    "DeliveryResult",
    "DeliveryStats",
    "SampleDelivery",
    "ServiceXTarget",
    "SkimDefinition",
    "SkippedInput",
    "build_query",
    "default_local_config",
    "deliver_fileset",
    "func_adl_source",
    "read_delivered",
    "read_target",
    "resolve_target",
    "skim_definition",
    "transform_requests",
    "uproot_raw_cut",
    "write_local_config",
]
