"""Place maps: descriptors of a recorded route, indexed for search."""
