raise SystemExit("exit at import")
