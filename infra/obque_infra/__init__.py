"""obque's deployment code: the AWS CDK app (``ObqueStack``), the Lambda bundle built
without Docker, and the custom resource that creates queue files.

Not part of the ``obque`` wheel. ``infra/app.py`` is the CDK entry point named in the
repo's ``cdk.json``; ``infra/gcp/`` is the Terraform module for Google Cloud.
"""
