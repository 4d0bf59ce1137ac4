"""Typed application state keys (`web.AppKey`), shared by collector.app and collector.routes."""

from __future__ import annotations

from aiohttp import web

from .acks import Acks
from .admission import Admission, Enrollments
from .auth import Auth
from .config import CollectorConfig
from .directory import Directory
from .events import EventStore
from .latest import LatestResults
from .metrics import Metrics
from .registry import Registry
from .validate import SeriesCap
from .writer import Writer

CONFIG = web.AppKey("config", CollectorConfig)
DIRECTORY = web.AppKey("directory", Directory)  # set only when the config names one
AUTH = web.AppKey("auth", Auth)
ACKS = web.AppKey("acks", Acks)
REGISTRY = web.AppKey("registry", Registry)
EVENTS = web.AppKey("events", EventStore)
LATEST = web.AppKey("latest", LatestResults)
WRITER = web.AppKey("writer", Writer)
METRICS = web.AppKey("metrics", Metrics)
SERIES = web.AppKey("series", SeriesCap)
ADMISSION = web.AppKey("admission", Admission)
ENROLLMENTS = web.AppKey("enrollments", Enrollments)
