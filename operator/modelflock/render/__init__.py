"""Pure functions from API objects to the Kubernetes objects and configs they become."""
