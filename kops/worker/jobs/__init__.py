"""Recipe-to-worker glue: one module per recipe, each building jobs from a recipe file's
``[[job]]`` options (:data:`kops.worker.registry.BUILTIN_KINDS` names them).

- `delay`: ``delay-forwarders``, ``delay-status``;
- `dlq`: ``retry-consumer``, ``dlq-replay``;
- `fanout`: ``backlog-fanout``;
- `lag`: ``consumer-lag``, the lag exporter (Prometheus gauges);
- `call`: ``call``, any function of yours.
"""
