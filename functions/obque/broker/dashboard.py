"""The live dashboard served at ``/``: one static page that polls the API every second."""

from __future__ import annotations

from importlib.resources import files

__all__ = ["DASHBOARD_HTML"]

DASHBOARD_HTML = files("obque.broker").joinpath("dashboard.html").read_text(encoding="utf-8")
