"""The sequential (block-by-block) calibration engine used by the layer-wise methods."""

from pts_hf.pipeline.blocks import Unit, find_units
from pts_hf.pipeline.hooks import HookOwner, StopForward
from pts_hf.pipeline.scores import activation_scores
from pts_hf.pipeline.sequential import PipelineReport, run_pipeline
from pts_hf.pipeline.stats import STATISTICS, LayerStats

__all__ = ["STATISTICS", "HookOwner", "LayerStats", "PipelineReport", "StopForward", "Unit", "activation_scores",
           "find_units", "run_pipeline"]
