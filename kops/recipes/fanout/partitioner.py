"""Kafka's default partitioner for keyed records, so a fan-out's target agrees with Java
producers writing to it."""

from __future__ import annotations

__all__ = ["murmur2", "partition_for_key"]


def murmur2(data: bytes) -> int:
    """Kafka's ``Utils.murmur2`` (seed 0x9747b28c), as a signed 32-bit int like Java's."""
    m = 0x5BD1E995
    mask = 0xFFFFFFFF
    length = len(data)
    h_ = (0x9747B28C ^ length) & mask
    n4 = length - length % 4
    for i in range(0, n4, 4):
        k = data[i] | (data[i + 1] << 8) | (data[i + 2] << 16) | (data[i + 3] << 24)
        k = (k * m) & mask
        k ^= k >> 24
        k = (k * m) & mask
        h_ = ((h_ * m) & mask) ^ k
    rest = length % 4
    if rest == 3:
        h_ ^= data[n4 + 2] << 16
    if rest >= 2:
        h_ ^= data[n4 + 1] << 8
    if rest >= 1:
        h_ ^= data[n4]
        h_ = (h_ * m) & mask
    h_ ^= h_ >> 13
    h_ = (h_ * m) & mask
    h_ ^= h_ >> 15
    return h_ - (1 << 32) if h_ & 0x80000000 else h_


def partition_for_key(key: bytes, partitions: int) -> int:
    """The partition the Java client's default partitioner picks for a non-null key."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions
