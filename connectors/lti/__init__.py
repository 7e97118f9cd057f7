"""LTI Advantage connector for platforms without API credentials: NRPS rosters, AGS items and scores."""

from connectors.lti.client import LtiServiceClient, PlatformSettings, TokenCache, service_url
from connectors.lti.connector import LtiAdvantageConnector, context_role, iso_timestamp

__all__ = [
    "LtiAdvantageConnector",
    "LtiServiceClient",
    "PlatformSettings",
    "TokenCache",
    "context_role",
    "iso_timestamp",
    "service_url",
]
