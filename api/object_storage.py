"""Output images in S3-compatible object storage (AWS S3, MinIO, R2, ...), through boto3.

With S3_BUCKET set, every output image of a completed job is uploaded by the outbox
(api/outbox.py: retried, survives restarts) under `<S3_PREFIX><job_id>/<file name>`, and the
job's status lists `output_urls`: presigned GET URLs valid for S3_URL_TTL seconds, made fresh
on every read, or plain `<S3_PUBLIC_BASE_URL>/<key>` URLs for a public bucket or a CDN.
Credentials come the usual AWS way (environment, shared files, instance roles): boto3 finds
them itself.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

from api.config import Config
from api.job import Job, image_name

# Each call to the storage has its own timeouts; the outbox retries, so boto3 need not.
CONNECT_TIMEOUT = 5
READ_TIMEOUT = 60
CHUNK = 1024 * 1024


def object_key(prefix: str, job_id: str, image: dict, taken: set[str]) -> str:
    """`<prefix><job_id>/<file name>` (subfolders flattened), unique within the job."""
    name = image_name(image).replace("/", "_")
    key = f"{prefix}{job_id}/{name}"
    number = 1
    while key in taken:
        key = f"{prefix}{job_id}/{number}_{name}"
        number += 1
    taken.add(key)
    return key


class ObjectStorage:
    """One bucket. The boto3 client is made on first use in each process (never before a
    fork) and shared by its threads, as boto3 clients may be."""

    def __init__(self, config: Config) -> None:
        self.bucket = config.s3_bucket
        self.prefix = config.s3_prefix
        self.endpoint_url = config.s3_endpoint_url or None
        self.region = config.s3_region or None
        self.url_ttl = int(config.s3_url_ttl)
        self.public_base_url = config.s3_public_base_url.rstrip("/")
        self.delete_local = config.s3_delete_local
        self._client = None
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return bool(self.bucket)

    @property
    def client(self):
        with self._lock:
            if self._client is None:
                import boto3
                from botocore.config import Config as BotoConfig

                self._client = boto3.session.Session().client(
                    "s3",
                    endpoint_url=self.endpoint_url,
                    region_name=self.region,
                    config=BotoConfig(
                        connect_timeout=CONNECT_TIMEOUT,
                        read_timeout=READ_TIMEOUT,
                        retries={"max_attempts": 1, "mode": "standard"},
                        # SigV4, which every region and S3-compatible server accepts (boto3
                        # presigns with the legacy v2 for some endpoints otherwise).
                        signature_version="s3v4",
                        # Path-style (endpoint/bucket/key) works with every S3-compatible
                        # server and with a bucket name that is not a DNS label.
                        s3={"addressing_style": "path"} if self.endpoint_url else None,
                    ),
                )
            return self._client

    def keys_for(self, job: Job, images: list[dict]) -> list[str]:
        taken: set[str] = set()
        return [object_key(self.prefix, job.id, image, taken) for image in images]

    def upload(self, path: Path, key: str, content_type: str) -> None:
        """Put one file (raises botocore/boto3 errors; the outbox retries)."""
        with open(path, "rb") as handle:
            self.client.put_object(
                Bucket=self.bucket, Key=key, Body=handle, ContentType=content_type
            )

    def url(self, key: str) -> str:
        """A URL a client can GET the object with (presigning is local: no request)."""
        if self.public_base_url:
            return f"{self.public_base_url}/{quote(key)}"
        return self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=self.url_ttl
        )

    def chunks(self, key: str) -> Iterator[bytes]:
        """An object's bytes, streamed (batch archives of images no longer on local disk)."""
        body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
        try:
            yield from body.iter_chunks(CHUNK)
        finally:
            body.close()
