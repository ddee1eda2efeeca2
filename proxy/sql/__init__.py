"""SQL facts layer: what a statement does, read from PostgreSQL's own grammar (libpg_query via
pglast). ``extract.analyze`` builds :class:`~proxy.sql.facts.QueryFacts`, ``cache`` memoises them
by exact text, ``redact`` removes secrets from text shown to humans."""
