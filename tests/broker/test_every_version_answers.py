"""Every (api key, version) in the dispatch table decodes and gets an answer.

ApiVersions advertises exactly this table, so a client may send any of these;
none may close the connection or go unanswered. Each version is sent twice:
once with every field empty and once with every field populated
(tests/protocol/kio_sample.py), which reaches the handlers' per-field paths.
Produce v0-2 have no kio schema: tests/broker/test_produce_legacy.py.
"""

from __future__ import annotations

import dataclasses
import datetime
import typing
import uuid
from typing import Any

import pytest
from kio.static.primitive import i32Timedelta, i64Timedelta

from kops.broker.dispatch import api_table
from kops.protocol.client import send_request
from kops.protocol.messages import is_legacy_produce, request_type
from tests.protocol.kio_sample import _strip_optional, sample

SERVED = [
    (key, version)
    for key, api in api_table().items()
    for version in range(api.min_version, api.max_version + 1)
    if not is_legacy_produce(key, version)
]

# A populated CreateTopics/CreatePartitions asks for 70,000 partitions; the
# empty form covers their decoding, the handlers' own tests the rest.
_TOO_HEAVY_TO_POPULATE = {19, 37}

_EMPTY_SCALARS: dict[str, Any] = {
    "bool": False,
    "string": "",
    "bytes": b"",
    "records": None,
    "timedelta_i32": i32Timedelta.parse(datetime.timedelta(0)),
    "timedelta_i64": i64Timedelta.parse(datetime.timedelta(0)),
    "datetime_i64": datetime.datetime.fromtimestamp(0, tz=datetime.UTC),
    "uuid": uuid.UUID(int=0),
    "float64": 0.0,
}


def _empty(cls: type[Any]) -> Any:
    """The smallest instance: empty arrays, nulls, zeros; defaults where kio has them."""
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        if not field.init or field.default is not dataclasses.MISSING:
            continue
        hint = hints[field.name]
        bare = _strip_optional(hint)
        kafka_type = field.metadata.get("kafka_type")
        if bare is not hint:
            values[field.name] = None
        elif typing.get_origin(bare) is tuple:
            values[field.name] = ()
        elif dataclasses.is_dataclass(bare):
            values[field.name] = _empty(bare)  # type: ignore[arg-type]
        elif kafka_type in _EMPTY_SCALARS:
            values[field.name] = _EMPTY_SCALARS[kafka_type]
        else:
            values[field.name] = bare(0)
    if "acks" in values:
        values["acks"] = 1  # acks=0 is the one request Kafka never answers
    return cls(**values)


def _ask(bootstrap: str, request: Any) -> Any:
    host, port = bootstrap.rsplit(":", 1)
    return send_request(host, int(port), request, timeout=15)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> typing.Iterator[str]:
    from kops.testing import run_broker

    with run_broker(tmp_path_factory.mktemp("every-version")) as address:
        yield address


@pytest.mark.parametrize(("key", "version"), SERVED, ids=[f"{k}v{v}" for k, v in SERVED])
def test_every_served_version_is_answered(broker: str, key: int, version: int) -> None:
    cls = request_type(key, version)
    forms = [_empty(cls)]
    if key not in _TOO_HEAVY_TO_POPULATE:
        forms.append(sample(cls))
    for request in forms:
        response = _ask(broker, request)
        assert response.__api_key__ == key
        assert response.__version__ == version
