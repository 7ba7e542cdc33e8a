"""facepipe: reproducible dataset-to-model builds for face models, as a Dagster asset graph."""

import warnings

# Two Dagster APIs facepipe uses on purpose are marked preview/beta (partitioned asset checks,
# MultiToSingleDimensionPartitionMapping); their warnings give users nothing to act on.
warnings.filterwarnings("ignore", message="Specifying a partitions_def on an AssetCheckSpec")
warnings.filterwarnings("ignore", message="Class `MultiToSingleDimensionPartitionMapping` is currently in beta")
