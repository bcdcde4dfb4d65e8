"""OpenAI-compatible serving of medtune models: batched streaming generation, grounding, web chat."""

from medtune.serve.app import create_app, serve, serve_from_args
from medtune.serve.config import ServeConfig, ServeConfigError, load_config

__all__ = ["ServeConfig", "ServeConfigError", "create_app", "load_config", "serve", "serve_from_args"]
