"""A local ServiceX-compatible endpoint (REST + S3 subset on 127.0.0.1, local worker processes)."""

from utils.delivery.local.server import LocalEndpoint, read_endpoint_info

__all__ = ["LocalEndpoint", "read_endpoint_info"]
