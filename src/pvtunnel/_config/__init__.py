"""Configuration: the attrs classes, TOML loading, flags, secrets and ``init``.

A package because one module would hold several ideas in over a thousand lines; this
file is its whole interface, and the rest of pvtunnel imports only from here.
"""

from .agent import (
    CA_FILE_UNUSED,
    AgentConfig,
    AgentTimeouts,
    Discovery,
    InspectConfig,
    Route,
    RouteType,
    ServerEndpoint,
)
from .check import check_file
from .loading import (
    MAX_TOKEN_FILE_BYTES,
    TOKEN_FILE_TOO_BIG,
    ConfigKind,
    admin_token_from_environment,
    load_agent_config,
    load_server_config,
    looks_like_a_token,
    read_limited_text,
)
from .model import AdminConfig
from .overrides import parse_route_flag, port_flag, with_agent_overrides, with_overrides
from .rules import token_text
from .scaffold import write_init_files
from .secret import Secret, generate_token
from .server import (
    ExternalConfig,
    InternalConfig,
    LimitsConfig,
    ScopedToken,
    ServerConfig,
    TimeoutsConfig,
)

__all__ = [
    "CA_FILE_UNUSED",
    "MAX_TOKEN_FILE_BYTES",
    "TOKEN_FILE_TOO_BIG",
    "AdminConfig",
    "AgentConfig",
    "AgentTimeouts",
    "ConfigKind",
    "Discovery",
    "ExternalConfig",
    "InspectConfig",
    "InternalConfig",
    "LimitsConfig",
    "Route",
    "RouteType",
    "ScopedToken",
    "Secret",
    "ServerConfig",
    "ServerEndpoint",
    "TimeoutsConfig",
    "admin_token_from_environment",
    "check_file",
    "generate_token",
    "load_agent_config",
    "load_server_config",
    "looks_like_a_token",
    "parse_route_flag",
    "port_flag",
    "read_limited_text",
    "token_text",
    "with_agent_overrides",
    "with_overrides",
    "write_init_files",
]
