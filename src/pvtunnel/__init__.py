"""pvtunnel: a reverse HTTP tunnel built on Trio.

Everything public is re-exported here (and listed in ``__all__``); every other
module is private. A program embeds a server or an agent with the same
configuration objects the CLI builds::

    server = pvtunnel.TunnelServer(server_config)
    addresses = await nursery.start(server.serve)
"""

from pvtunnel._config import (
    AdminConfig as AdminConfig,
    AgentConfig as AgentConfig,
    AgentTimeouts as AgentTimeouts,
    Discovery as Discovery,
    ExternalConfig as ExternalConfig,
    InspectConfig as InspectConfig,
    InternalConfig as InternalConfig,
    LimitsConfig as LimitsConfig,
    Route as Route,
    RouteType as RouteType,
    ScopedToken as ScopedToken,
    Secret as Secret,
    ServerConfig as ServerConfig,
    ServerEndpoint as ServerEndpoint,
    TimeoutsConfig as TimeoutsConfig,
    load_agent_config as load_agent_config,
    load_server_config as load_server_config,
)
from pvtunnel._errors import (
    ConfigError as ConfigError,
    ErrorCode as ErrorCode,
    HandshakeRefusedError as HandshakeRefusedError,
    LocalProtocolError as LocalProtocolError,
    ProtocolError as ProtocolError,
    PvTunnelError as PvTunnelError,
    RemoteProtocolError as RemoteProtocolError,
    ServerCertificateError as ServerCertificateError,
    TunnelClosedError as TunnelClosedError,
    UpstreamError as UpstreamError,
)
from pvtunnel._trio.agent import (
    AgentStatus as AgentStatus,
    TunnelAgent as TunnelAgent,
)
from pvtunnel._trio.server import (
    ServerAddresses as ServerAddresses,
    TunnelServer as TunnelServer,
)

__version__ = "0.1.0"

__all__ = [
    "AdminConfig",
    "AgentConfig",
    "AgentStatus",
    "AgentTimeouts",
    "ConfigError",
    "Discovery",
    "ErrorCode",
    "ExternalConfig",
    "HandshakeRefusedError",
    "InspectConfig",
    "InternalConfig",
    "LimitsConfig",
    "LocalProtocolError",
    "ProtocolError",
    "PvTunnelError",
    "RemoteProtocolError",
    "Route",
    "RouteType",
    "ScopedToken",
    "Secret",
    "ServerAddresses",
    "ServerCertificateError",
    "ServerConfig",
    "ServerEndpoint",
    "TimeoutsConfig",
    "TunnelAgent",
    "TunnelClosedError",
    "TunnelServer",
    "UpstreamError",
    "__version__",
    "load_agent_config",
    "load_server_config",
]
