"""Route selection (pure): the first route whose match fits the request."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from modelflock.router.config import Route


def route_matches(route: Route, intent: str, model: str, headers: Mapping[str, str]) -> bool:
    m = route.match
    if m.intents and intent not in m.intents:
        return False
    if m.models and model not in m.models:
        return False
    return all(headers.get(h.name) == h.value for h in m.headers)


def select_route(
    routes: Sequence[Route], intent: str, model: str, headers: Mapping[str, str]
) -> Route | None:
    for route in routes:
        if route_matches(route, intent, model, headers):
            return route
    return None


def candidate_sequence(route: Route) -> list[str]:
    """Experts in the order they may be tried: the expert or cascade, then the fallbacks."""
    sequence = route.primary
    return sequence + [f for f in route.fallbacks if f not in sequence]
