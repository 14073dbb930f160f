"""Built-in job kinds; importing this package registers them."""

from diffinv.bench.kinds import (
    dmplug_cost,
    network_speed,
    overhead,
    prior_quality,
    restore,
    video_restore,
)

__all__ = ["dmplug_cost", "network_speed", "overhead", "prior_quality", "restore",
           "video_restore"]
