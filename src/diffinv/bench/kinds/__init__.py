"""Built-in job kinds; importing this package registers them."""

from diffinv.bench.kinds import network_speed, overhead, prior_quality, restore

__all__ = ["network_speed", "overhead", "prior_quality", "restore"]
