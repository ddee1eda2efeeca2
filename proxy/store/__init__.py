"""The central audit store: audit events from every proxy in one PostgreSQL table.

``schema`` creates and migrates the tables, ``shipper`` copies each proxy's local JSONL trail
into them (exactly once, in order), ``query`` reads them back with the ``logs`` filters
pushed down into SQL.
"""
