"""Operations plumbing shared by both daemons: HTTP health/metrics listener, systemd notify, config reload."""
