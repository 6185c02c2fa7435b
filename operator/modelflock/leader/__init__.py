"""Leader election on a coordination.k8s.io Lease: one operator replica writes, others stand by."""
