"""Review tools over an audit trail: the ``report`` summary and the policy ``replay``.

Both consume an ``Iterable[dict]`` of audit events (from JSONL files today, from the central
store later) and stream over it: memory grows with the number of distinct keys (users, query
shapes, sessions), never with the number of events.
"""
