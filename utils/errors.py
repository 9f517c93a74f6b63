"""Project exception types: each carries a message that names the file or key and what to do."""

from __future__ import annotations


class AGCError(Exception):
    """Base class of every error the pipeline raises on purpose."""


class ConfigError(AGCError):
    """A configuration file (analysis, cabinetry, fileset, servicex) is malformed or inconsistent."""


class InputFileError(AGCError):
    """An input file is missing, unreadable, truncated, or lacks a tree or branch the analysis needs."""


class DeliveryError(AGCError):
    """ServiceX delivery failed, was incomplete, or the endpoint is unreachable."""


class StatisticsError(AGCError):
    """The statistical model is inconsistent with the histograms (missing template, ...)."""


class ModelError(AGCError):
    """An ML model file or its model card is missing, inconsistent or incompatible."""
