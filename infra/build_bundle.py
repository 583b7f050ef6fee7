#!/usr/bin/env python3
"""Build deployment artefacts under ``.build/`` without Docker.

    .venv/bin/python infra/build_bundle.py aws   # .build/aws-lambda/ (or --out DIR)
    .venv/bin/python infra/build_bundle.py gcp   # .build/gcp-function/ (infra/gcp's source_dir)

``cdk synth`` builds the Lambda bundle by itself, and ``sam build`` runs the ``aws``
target through ``infra/sam/Makefile`` (``--out $(ARTIFACTS_DIR)``); run ``gcp`` before
``terraform apply``.
"""

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from obque_infra.bundle import BundleSpec, build_bundle, export_bundle
from obque_infra.gcp_source import build_gcp_source


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", choices=["aws", "gcp"])
    parser.add_argument("--out", type=Path, help="output directory (default: under .build/)")
    args = parser.parse_args()
    if args.target == "aws":
        spec = BundleSpec()
        out = args.out or spec.repo / ".build" / "aws-lambda"
        bundle = build_bundle(spec)
        if out.exists():
            shutil.rmtree(out)
        export_bundle(bundle, out)
    else:
        out = build_gcp_source(out=args.out)
    print(out)


if __name__ == "__main__":
    main()
