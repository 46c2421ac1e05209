"""Operating a node: the HTTP admin listener (metrics, health, readiness, status page),
service-manager notifications, and config reload."""
