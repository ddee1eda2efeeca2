"""Policies: YAML rules that allow, flag or block statements, decided from SQL facts."""
