"""``python -m dfp_ray.serve``: start the HTTP application (same options as ``dfp-ray serve``)."""

import sys

from dfp_ray.commands.serve import main

sys.exit(main())
