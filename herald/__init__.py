"""Herald's domain core: configuration, identity rules, ingestion and routing contracts."""
