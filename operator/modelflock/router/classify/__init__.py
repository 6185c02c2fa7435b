"""Deciding a request's intent: rules, embedding and llm stages, chained cheapest first."""
