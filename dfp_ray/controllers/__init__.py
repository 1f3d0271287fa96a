"""Ray-free controllers that the actors wrap: what a user actor does (:mod:`.user`) and the router's decisions (:mod:`.router`)."""
