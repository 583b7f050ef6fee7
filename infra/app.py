#!/usr/bin/env python3
"""CDK entry point (``cdk.json`` runs ``.venv/bin/python infra/app.py`` from the repo root)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from obque_infra.cdk_app import build_app

build_app().synth()
