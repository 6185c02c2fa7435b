"""The operator: kopf handlers (thin), startup, and the operator configuration."""
