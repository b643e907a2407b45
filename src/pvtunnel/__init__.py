"""pvtunnel: a reverse HTTP tunnel built on Trio.

Everything public is re-exported here (and listed in ``__all__``); every other
module is private. A program embeds a server or an agent with the same
configuration objects the CLI builds::

    server = pvtunnel.TunnelServer(server_config)
    addresses = await nursery.start(server.serve)

The names are imported on first use, not with the package: ``pvtunnel`` on the
command line starts here, and `pvtunnel.__main__` must have its Ctrl-C handling
in place before trio and the rest load (a few hundred milliseconds), or a Ctrl-C
then would end in a traceback.
"""

import importlib
import typing

__version__ = "0.1.0"

# Where the public names are defined, for `__getattr__`: the imports below, which
# only type checkers run.
_SOURCES: typing.Final = (
    "pvtunnel._config",
    "pvtunnel._errors",
    "pvtunnel._trio.agent",
    "pvtunnel._trio.links",
    "pvtunnel._trio.server",
)

if typing.TYPE_CHECKING:
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
    from pvtunnel._trio.agent import TunnelAgent as TunnelAgent
    from pvtunnel._trio.links import AgentStatus as AgentStatus
    from pvtunnel._trio.server import (
        ServerAddresses as ServerAddresses,
        TunnelServer as TunnelServer,
    )
else:

    def __getattr__(name: str) -> object:
        """Import a public name on its first use; kept, so this runs once per name."""
        if name in __all__:
            for source in _SOURCES:
                module = importlib.import_module(source)
                if hasattr(module, name):
                    value = getattr(module, name)
                    globals()[name] = value
                    return value
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted({*globals(), *__all__})


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
