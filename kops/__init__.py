"""kops: an operator's toolkit for Kafka-style messaging."""

__version__ = "0.1.0"
