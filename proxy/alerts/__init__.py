"""Automated alerts on the audit event stream.

``rules`` loads the YAML rules (every problem as file:line:col; filters are the ``pgwarden
logs`` :class:`~proxy.audit.filters.EventFilter`), ``window`` holds the bounded sliding
windows and first-seen memory, ``engine`` turns events into fired alerts (themselves audit
events), ``destinations`` delivers them (log, webhooks), and ``replay`` runs recorded events
through the rules for ``pgwarden alerts test``.
"""
