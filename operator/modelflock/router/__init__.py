"""The routing sidecar/gateway: an OpenAI-compatible server that picks an expert per request."""
