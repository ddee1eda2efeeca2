"""Authentication modes (docs/tls.md): SCRAM on both legs, the users file, passthrough's
channel-binding rules, client-certificate identity and login rate limiting. Sans-IO."""
