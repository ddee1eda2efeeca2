# pgwarden container image.
#
#   docker build -t pgwarden .
#   docker run -p 6432:6432 -v pgwarden-audit:/var/lib/pgwarden/audit \
#       -e PGWARDEN_UPSTREAM=db.example.internal:5432 pgwarden
#
# Every `pgwarden serve` option is also a PGWARDEN_* environment variable; set them (or
# PGWARDEN_CONFIG) rather than flags, so the health check sees the same configuration. The
# admin API (health, metrics) listens on 127.0.0.1:9187 inside the container by default;
# publish it with -e PGWARDEN_ADMIN_LISTEN=0.0.0.0:9187 (and set PGWARDEN_ADMIN_TOKEN_FILE)
# if you need it outside. The health check asks /healthz wherever admin.listen is, and with
# the admin API off (PGWARDEN_ADMIN_LISTEN="") checks that the proxy port accepts connections.

# ---- builder: one wheel for pgwarden and one for each dependency --------------------------
FROM python:3.12-slim AS builder
WORKDIR /src
COPY pyproject.toml setup.py MANIFEST.in README.md LICENSE ./
COPY proxy ./proxy
COPY policies ./policies
RUN python -m pip wheel --no-cache-dir --wheel-dir /wheels .

# ---- runtime ------------------------------------------------------------------------------
FROM python:3.12-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PGWARDEN_LISTEN=0.0.0.0:6432 \
    PGWARDEN_AUDIT_DIR=/var/lib/pgwarden/audit
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/pgwarden \
        --shell /usr/sbin/nologin pgwarden \
    && mkdir -p /var/lib/pgwarden/audit \
    && chown -R pgwarden:pgwarden /var/lib/pgwarden
COPY --from=builder /wheels /tmp/wheels
RUN python -m pip install --no-cache-dir --no-index --find-links=/tmp/wheels pgwarden \
    && rm -rf /tmp/wheels
COPY policies /usr/share/pgwarden/policies
COPY LICENSE /usr/share/doc/pgwarden/LICENSE

USER pgwarden
WORKDIR /var/lib/pgwarden
VOLUME /var/lib/pgwarden/audit
EXPOSE 6432 9187
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-m", "proxy.healthcheck"]
ENTRYPOINT ["pgwarden", "serve"]
