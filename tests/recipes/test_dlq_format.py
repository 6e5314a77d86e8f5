"""One view of kops, Spring Kafka and Kafka Connect dead letters (no broker needed)."""

from __future__ import annotations

import struct

from kops.consume import ConsumedRecord
from kops.recipes import headers as h
from kops.recipes.dlq import DeadLetter, dead_letter_headers, exception_name, looks_like_dlq


def record(headers, topic="x.dlq", key=b"k", value=b"v", ts=1_700_000_000_500) -> ConsumedRecord:
    return ConsumedRecord(topic, 0, 3, ts, "create_time", key, value, list(headers))


class PaymentDeclined(Exception):
    pass


def test_kops_headers_complete():
    try:
        raise PaymentDeclined("card expired")
    except PaymentDeclined as exc:
        hs = dead_letter_headers(
            [("trace", b"t1"), (h.RETRY_ATTEMPT, b"2"), (h.DELAY_TARGET, b"orders")],
            exc,
            topic="orders",
            partition=2,
            offset=41,
            timestamp_ms=1_700_000_000_000,
            group="billing",
            attempts=5,
            first_failure_ms=1_700_000_000_100,
            reason="retries-exhausted",
            now_ms=1_700_000_000_900,
        )
    names = {k for k, _ in hs}
    for name in (
        h.DLQ_ORIGINAL_TOPIC, h.DLQ_ORIGINAL_PARTITION, h.DLQ_ORIGINAL_OFFSET,
        h.DLQ_ORIGINAL_TIMESTAMP, h.DLQ_GROUP, h.DLQ_EXCEPTION_CLASS, h.DLQ_EXCEPTION_MESSAGE,
        h.DLQ_EXCEPTION_STACKTRACE, h.DLQ_ATTEMPTS, h.DLQ_FIRST_FAILURE_MS, h.DLQ_FAILED_AT_MS,
        h.DLQ_REASON,
    ):  # fmt: skip
        assert name in names, name
    assert ("trace", b"t1") in hs
    assert h.RETRY_ATTEMPT not in names and h.DELAY_TARGET not in names
    dl = DeadLetter.from_record(record(hs))
    assert dl.format == "kops"
    assert (dl.original_topic, dl.original_partition, dl.original_offset) == ("orders", 2, 41)
    assert dl.original_timestamp_ms == 1_700_000_000_000
    assert dl.group == "billing" and dl.attempts == 5 and dl.reason == "retries-exhausted"
    assert dl.exception_class == f"{__name__}.PaymentDeclined"
    assert dl.exception_message == "card expired"
    assert "raise PaymentDeclined" in (dl.stacktrace or "")
    assert dl.first_failure_ms == 1_700_000_000_100 and dl.failed_ms == 1_700_000_000_900
    assert dl.matches_exception("PaymentDeclined") and not dl.matches_exception("Declined")


def test_spring_headers_with_binary_numbers():
    hs = [
        ("kafka_dlt-original-topic", b"orders"),
        ("kafka_dlt-original-partition", struct.pack(">i", 3)),
        ("kafka_dlt-original-offset", struct.pack(">q", 1234567890123)),
        ("kafka_dlt-original-timestamp", struct.pack(">q", 1_700_000_000_000)),
        ("kafka_dlt-original-timestamp-type", b"CreateTime"),
        ("kafka_dlt-original-consumer-group", b"orders-app"),
        ("kafka_dlt-exception-fqcn", b"org.springframework.kafka.listener.ListenerExecutionFailedException"),
        ("kafka_dlt-exception-cause-fqcn", b"java.lang.IllegalStateException"),
        ("kafka_dlt-exception-message", b"Listener failed; no stock"),
        ("kafka_dlt-exception-stacktrace", b"java.lang.IllegalStateException: no stock\n\tat ..."),
        ("retry_topic-attempts", struct.pack(">i", 4)),
    ]  # fmt: skip
    dl = DeadLetter.from_record(record(hs, topic="orders-dlt"))
    assert dl.format == "spring"
    assert dl.original_topic == "orders" and dl.original_partition == 3
    assert dl.original_offset == 1234567890123
    assert dl.original_timestamp_ms == 1_700_000_000_000
    assert dl.group == "orders-app" and dl.attempts == 4
    # Spring's wrapper is unwrapped to the cause it names; the wrapper is kept in extra.
    assert dl.exception_class == "java.lang.IllegalStateException"
    assert dl.extra["wrapper_class"].endswith("ListenerExecutionFailedException")
    assert dl.matches_exception("IllegalStateException")
    assert dl.matches_exception("ListenerExecutionFailedException")  # the wrapper still matches
    assert dl.extra["cause_class"] == "java.lang.IllegalStateException"
    assert dl.to_dict()["original_offset"] == 1234567890123


def test_connect_headers():
    p = "__connect.errors."
    hs = [
        (p + "topic", b"pageviews"),
        (p + "partition", b"1"),
        (p + "offset", b"99"),
        (p + "connector.name", b"s3-sink"),
        (p + "task.id", b"0"),
        (p + "stage", b"VALUE_CONVERTER"),
        (p + "class.name", b"org.apache.kafka.connect.json.JsonConverter"),
        (p + "exception.class.name", b"org.apache.kafka.connect.errors.DataException"),
        (p + "exception.message", b"Converting byte[] to Kafka Connect data failed"),
        (p + "exception.stacktrace", b"org.apache.kafka.connect.errors.DataException: ..."),
    ]
    dl = DeadLetter.from_record(record(hs, topic="dlq-s3-sink"))
    assert dl.format == "connect"
    assert (dl.original_topic, dl.original_partition, dl.original_offset) == ("pageviews", 1, 99)
    assert dl.group == "connect-s3-sink"
    assert dl.exception_class == "org.apache.kafka.connect.errors.DataException"
    assert dl.extra["stage"] == "VALUE_CONVERTER"
    assert dl.failed_ms == 1_700_000_000_500  # no failure time header: the record's time


def test_plain_record_is_unknown_format():
    dl = DeadLetter.from_record(record([("a", b"b")]))
    assert dl.format == "unknown" and dl.exception_class is None and dl.original_topic is None


def test_names():
    assert exception_name(ValueError("x")) == "ValueError"
    assert exception_name(PaymentDeclined()) == f"{__name__}.PaymentDeclined"
    for name in ("orders.dlq", "orders-dlt", "orders.DLT", "orders_dlq", "%DLQ%g", "dlq-s3"):
        assert looks_like_dlq(name), name
    for name in ("orders", "dlqs", "orders.dlq.replayed"):
        assert not looks_like_dlq(name), name


SPRING_WRAPPER = "org.springframework.kafka.listener.ListenerExecutionFailedException"


def test_spring_wrapper_unwrapped_from_the_stack_trace_without_a_cause_header():
    stack = (
        f"{SPRING_WRAPPER}: Listener method 'void listen(String)' threw exception\n"
        "\tat org.springframework.kafka.listener.KafkaMessageListenerContainer...\n"
        "Caused by: com.shop.OutOfStock: sku 42 out of stock\n\tat com.shop.Listener.listen"
    )
    hs = [
        ("kafka_dlt-original-topic", b"orders"),
        ("kafka_dlt-exception-fqcn", SPRING_WRAPPER.encode()),
        ("kafka_dlt-exception-message", b"Listener method threw exception"),
        ("kafka_dlt-exception-stacktrace", stack.encode()),
    ]
    dl = DeadLetter.from_record(record(hs))
    assert dl.exception_class == "com.shop.OutOfStock"
    assert dl.exception_message == "sku 42 out of stock"
    assert dl.extra["wrapper_class"] == SPRING_WRAPPER


def test_connect_wrapper_unwrapped_to_its_cause():
    p = "__connect.errors."
    stack = (
        "org.apache.kafka.connect.errors.ConnectException: Tolerance exceeded in error handler\n"
        "\tat org.apache.kafka.connect.runtime.errors.RetryWithToleranceOperator...\n"
        "Caused by: org.apache.kafka.connect.errors.DataException: Converting failed\n"
        "Caused by: org.apache.kafka.common.errors.SerializationException: bad magic\n"
    )
    hs = [
        (p + "topic", b"pageviews"),
        (p + "exception.class.name", b"org.apache.kafka.connect.errors.ConnectException"),
        (p + "exception.message", b"Tolerance exceeded in error handler"),
        (p + "exception.stacktrace", stack.encode()),
    ]
    dl = DeadLetter.from_record(record(hs))
    # The first cause that is not a mere wrapper: DataException (which says what failed).
    assert dl.exception_class == "org.apache.kafka.connect.errors.DataException"
    assert dl.exception_message == "Converting failed"
    assert dl.extra["wrapper_class"] == "org.apache.kafka.connect.errors.ConnectException"


def test_exception_filter_takes_simple_or_qualified_names_in_any_case():
    hs = [
        ("kafka_dlt-original-topic", b"o"),
        ("kafka_dlt-exception-fqcn", b"com.shop.Order$Invalid"),
    ]
    dl = DeadLetter.from_record(record(hs))
    for name in ("Invalid", "invalid", "com.shop.Order$Invalid", "COM.SHOP.ORDER$INVALID",
                 "Order$Invalid", "shop.order$invalid"):  # fmt: skip
        assert dl.matches_exception(name), name
    for name in ("Inval", "Order", "com.shop", "xcom.shop.Order$Invalid", ""):
        assert not dl.matches_exception(name), name
    builtin = DeadLetter.from_record(record([(h.DLQ_EXCEPTION_CLASS, b"ValueError")]))
    assert builtin.matches_exception("valueerror") and builtin.matches_exception("ValueError")


def test_main_module_is_not_part_of_a_class_name():
    script_error = type("ScriptError", (Exception,), {"__module__": "__main__"})
    assert exception_name(script_error("x")) == "ScriptError"
    # Dead letters written before (or by other tools) with "__main__." are shown without it.
    dl = DeadLetter.from_record(record([(h.DLQ_EXCEPTION_CLASS, b"__main__.ScriptError")]))
    assert dl.exception_class == "ScriptError" and dl.matches_exception("scripterror")
    assert dl.matches_exception("__main__.ScriptError")


def test_origin_is_topic_partition_offset():
    hs = [(h.DLQ_ORIGINAL_TOPIC, b"orders"), (h.DLQ_ORIGINAL_PARTITION, b"2"),
          (h.DLQ_ORIGINAL_OFFSET, b"41"), (h.DLQ_EXCEPTION_CLASS, b"KeyError")]  # fmt: skip
    dl = DeadLetter.from_record(record(hs))
    assert dl.origin == "orders/2@41" and dl.to_dict()["origin"] == "orders/2@41"
    assert DeadLetter.from_record(record([("a", b"b")])).origin is None
