"""The test S3 server itself: it must hold as many buckets as the suite creates, whatever the disk's free space."""

from __future__ import annotations


def test_server_holds_many_buckets_independent_of_free_disk(s3_server):
    # Each bucket is a SeaweedFS collection. With the volume limit derived from free disk (the old `-volume.max=0`)
    # and 7 volumes per collection, a machine with 31 GB free ran out after 17 buckets and PutObject failed with
    # InternalError; CI failed that way. 40 buckets on a fresh server: more than that old limit here.
    client = s3_server.client()
    for i in range(40):
        bucket = s3_server.new_bucket()
        client.put_object(Bucket=bucket, Key="k", Body=b"%d" % i)
        assert client.get_object(Bucket=bucket, Key="k")["Body"].read() == b"%d" % i
