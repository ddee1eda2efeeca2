"""Several proxy processes on one address (``workers``): the supervisor, each worker's role,
the sibling channel between workers, and what worker 0 gathers from the others for the one
admin listener (sessions, reloads, approvals, metrics). The audit layout of a trail set is
:mod:`proxy.audit.trailset`."""
