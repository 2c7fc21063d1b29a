"""RDS route configurations on the main side: `registry.RouteRegistry` owns one subscription
per route-config name (shared by every listener version that uses it), the accepted copies,
the `RouteHandle`s the HCMs serve from, and the `http.<prefix>.rds.<name>.*` stats."""
