"""The obque client: ``Client`` / ``AsyncClient``, claimed jobs, the ``Worker`` runner.

from obque.client import Client
q = Client("s3://my-bucket/queue.json")      # reads queue.json, finds the broker
q.push({"video": "a.mp4"}, key="upload-a")
for job in q.jobs(worker="w1"):              # long polls; heartbeats in the background
    with job:                                # acks on success, nacks on an exception
        handle(job.payload)
"""

from obque.client.aio import AsyncClient
from obque.client.calls import PushItem
from obque.client.jobs import AsyncJob, Job
from obque.client.retry import BrokerUnreachable, RetryPolicy
from obque.client.sync import Client
from obque.client.worker import Worker

__all__ = [
    "AsyncClient",
    "AsyncJob",
    "BrokerUnreachable",
    "Client",
    "Job",
    "PushItem",
    "RetryPolicy",
    "Worker",
]
