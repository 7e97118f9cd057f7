"""OneRoster 1.1/1.2 connectors: REST (signed or client-credentials) and CSV packages (zip or folder)."""

from connectors.oneroster.connector import (
    OneRosterConnector,
    OneRosterCsvConnector,
    OneRosterRestConnector,
)

__all__ = ["OneRosterConnector", "OneRosterCsvConnector", "OneRosterRestConnector"]
