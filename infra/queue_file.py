#!/usr/bin/env python3
"""Create a deployment's queue file if it is absent, and point its broker record at a URL.

    .venv/bin/python infra/queue_file.py gs://BUCKET/queue.json \\
        --broker-url "$(terraform -chdir=infra/gcp output -raw function_url)" \\
        --broker-id cloudfunctions:obque-broker

What the CDK stack's custom resource does on every deploy, for deployments that have no
such hook (the Terraform module, see docs/deploy.md): the file is created only when absent
(an existing queue, its jobs and settings are never overwritten), and the ``broker``
record is changed by compare-and-set, only when it names another URL or id.
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from obque_infra.queue_resource import ensure_queue, parse_config, queue_name

from obque.core import BrokerRecord, ObqueError


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("uri", help="the queue file: gs://BUCKET/NAME.json or s3://…")
    parser.add_argument("--broker-url", required=True, help="the function's URL")
    parser.add_argument("--broker-id", required=True, help="names the deployment in the record")
    parser.add_argument(
        "--config", default="{}", help='settings of a queue created now: {"lease_seconds": 60}'
    )
    args = parser.parse_args()
    try:
        record = BrokerRecord(url=args.broker_url, mode="serverless", id=args.broker_id)
        created, state = ensure_queue(
            args.uri, queue_name(args.uri), record, parse_config(args.config)
        )
    except (ObqueError, json.JSONDecodeError) as exc:
        raise SystemExit(f"queue_file: {exc}") from None
    broker = state.broker
    print(
        f"{args.uri}: {'created' if created else 'exists'}, revision {state.revision}, "
        f"broker {broker.url if broker else None} (epoch {broker.epoch if broker else 0})"
    )


if __name__ == "__main__":
    main()
