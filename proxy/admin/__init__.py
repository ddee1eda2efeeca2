"""The admin HTTP API: health, readiness, metrics, live sessions, cancel/terminate, reload."""
