"""Shadow evaluation in the router: which answered requests are sampled (`sampling`), the
daily budget (`budget`), the off-path sample runs and their counters (`runner`), and the
report of those counters to the operator (`reporting`). docs/evaluation.md."""
