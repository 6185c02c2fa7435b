"""Shadow evaluation shared by the router, the operator, the report and the simulated engine:
statistics and decisions (`stats`), the judge's prompt and verdicts (`judge`), and the
counters routers report (`tally`). Pure modules only: no I/O."""
