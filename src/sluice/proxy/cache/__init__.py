"""Caching, whatever is cached: the backend interface (`store`), the memory (`memory` over the
pure `lru`), Redis (`rediscache`, with its `breaker`) and tiered backends (`tiered`), the choice
among them (`backends`), the key layout (`keyspace`) and single-flight (`flights`)."""
