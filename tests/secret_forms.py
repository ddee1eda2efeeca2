"""The secret corpus: every credential form the security review found leaking, plus the ones
redaction always covered. Shared by the unit corpus (tests/test_secret_corpus.py) and the
end-to-end one (tests/e2e/test_secret_corpus.py), which checks every output of a real proxy.

Each form carries its own marker, so a leak names the form that leaked.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Form:
    id: str
    sql: str  # {s} is the secret
    needs_facts: bool = False  # only redact_statement (with the resolved facts) can see it

    @property
    def secret(self) -> str:
        return f"Zq{self.id.replace('-', '')[:14]}Sx"

    def text(self) -> str:
        return self.sql.replace("{s}", self.secret)


FORMS = (
    Form("role-password", "CREATE ROLE r_{n} LOGIN PASSWORD '{s}'"),
    Form("alter-role-password", "ALTER ROLE r_{n} PASSWORD '{s}'"),
    Form("user-mapping", "CREATE USER MAPPING FOR r_{n} SERVER s_{n} OPTIONS (password '{s}')"),
    Form("sslpassword", "CREATE USER MAPPING FOR r_{n} SERVER s_{n} OPTIONS (sslpassword '{s}')"),
    Form("subscription", "CREATE SUBSCRIPTION sub_{n} CONNECTION 'password={s}' PUBLICATION p"),
    Form("set-config-key", "SELECT set_config('app.api_key', '{s}', false)"),
    Form("set-config-token", "SELECT set_config('app.token', '{s}', true)"),
    Form("set-password", "SET app.password = '{s}'"),
    Form("set-token-to", "SET app.token TO '{s}'"),
    Form("set-session-secret", "SET SESSION app.secret = '{s}'"),
    Form("alter-role-set", "ALTER ROLE r_{n} SET app.api_key = '{s}'"),
    Form("crypt", "SELECT crypt('{s}', gen_salt('bf'))"),
    Form("pgp-sym-encrypt", "SELECT pgp_sym_encrypt('data', '{s}')"),
    Form("pgp-sym-decrypt", "SELECT pgp_sym_decrypt('\\x00'::bytea, '{s}')"),
    Form("pgp-sym-bytea", "SELECT pgp_sym_encrypt_bytea('\\x00'::bytea, '{s}')"),
    Form("pgp-pub-decrypt", "SELECT pgp_pub_decrypt('\\x00'::bytea, dearmor('k'), '{s}')"),
    Form("pgp-pub-key", "SELECT pgp_pub_encrypt('data', dearmor('{s}'))"),
    Form("encrypt", "SELECT encrypt('data', '{s}', 'aes')"),
    Form("decrypt", "SELECT decrypt('\\x00', '{s}', 'aes')"),
    Form("encrypt-iv", "SELECT encrypt_iv('data', '{s}', 'iv', 'aes')"),
    Form("hmac", "SELECT hmac('data', '{s}', 'sha256')"),
    Form("comment-uri", "SELECT 1 /* postgresql://u:{s}@db/app */"),
    Form("comment-password", "SELECT 1 -- password={s}\n"),
    Form("do-alter-role", "DO $$ BEGIN ALTER ROLE r_{n} PASSWORD '{s}'; END $$"),
    Form("do-quoted", "DO 'BEGIN ALTER ROLE r_{n} PASSWORD ''{s}''; END'"),
    Form(
        "do-execute-format",
        "DO $$ BEGIN EXECUTE format('ALTER ROLE %I PASSWORD %L', 'r_{n}', '{s}'); END $$",
    ),
    Form("format", "SELECT format('ALTER ROLE r_{n} PASSWORD %L', '{s}')"),
    Form("dblink-exec-sql", "SELECT dblink_exec('dbname=x', 'ALTER ROLE r_{n} PASSWORD ''{s}''')"),
    Form("dblink-connect", "SELECT dblink_connect('c_{n}', 'host=127.0.0.1 password={s}')"),
    Form("dblink-uri", "SELECT dblink('postgresql://u:{s}@127.0.0.1/x', 'SELECT 1')"),
    Form(
        "fdw-server",
        "CREATE SERVER s_{n} FOREIGN DATA WRAPPER postgres_fdw OPTIONS (password '{s}')",
    ),
    Form("update-password-column", "UPDATE t_{n} SET password = '{s}' WHERE id = 1"),
    Form("unterminated-password", "CREATE ROLE r_{n} PASSWORD '{s}"),
    Form(
        "execute-secret-param",
        "EXECUTE q_{n}('{s}')",
        needs_facts=True,
    ),
)

# The PREPARE the execute form needs, sent before it (it holds no secret).
PREPARE = "PREPARE q_{n}(text) AS SELECT set_config('app.token', $1, false)"


def text_of(form: Form, n: str) -> str:
    return form.text().replace("{n}", n)
