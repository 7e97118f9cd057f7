"""Canvas LMS connector (REST API with an admin token or an OAuth2 refresh token)."""

from connectors.canvas.connector import CanvasConnector

__all__ = ["CanvasConnector"]
