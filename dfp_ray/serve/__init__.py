"""Ray Serve deployments (HTTP scoring and fingerprint endpoints) live here."""
