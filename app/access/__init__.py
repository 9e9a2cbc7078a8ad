"""Access: who may ask (API keys, from the settings or the database, and their scopes) and
how often (per-key rate limits, shared by replicas)."""
