"""Queue-depth autoscaling: metric sources, the pure decision, and the loop joining them."""
