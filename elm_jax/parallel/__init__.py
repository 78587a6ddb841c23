"""Device meshes, logical-axis sharding rules and (later) multi-host initialisation."""
