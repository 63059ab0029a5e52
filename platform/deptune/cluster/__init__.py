"""Ray: connecting to a cluster (or starting a loopback-only local one), fit checks, and running a
training run as a Ray Train job."""
