"""Typed keys of the router's aiohttp application state."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from modelflock.router.accounting import RouterMetrics
from modelflock.router.discovery import DiscoveryClient
from modelflock.router.dispatch import Dispatcher
from modelflock.router.state import StateHolder
from modelflock.router.upstream import Upstream

HOLDER: web.AppKey[StateHolder] = web.AppKey("holder", StateHolder)
METRICS: web.AppKey[RouterMetrics] = web.AppKey("metrics", RouterMetrics)
DISPATCHER: web.AppKey[Dispatcher] = web.AppKey("dispatcher", Dispatcher)
UPSTREAM: web.AppKey[Upstream] = web.AppKey("upstream", Upstream)
DISCOVERY: web.AppKey[DiscoveryClient] = web.AppKey("discovery", DiscoveryClient)
CONFIG_PATH: web.AppKey[Path] = web.AppKey("config_path", Path)
