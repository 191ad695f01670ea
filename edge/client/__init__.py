"""Async Python client: Admin, Producer, Consumer."""

from edge.client.admin import Admin
from edge.client.consumer import Consumer, Offset, PartitionRecords, SkippedBatch
from edge.client.producer import Producer, ProduceResult, RecordFuture, RecordMetadata
from edge.protocol.batch import Record
from edge.protocol.messages import Acks

__all__ = ["Acks", "Admin", "Consumer", "Offset", "PartitionRecords", "ProduceResult",
           "Producer", "Record", "RecordFuture", "RecordMetadata", "SkippedBatch"]
