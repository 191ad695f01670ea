"""Every API's request and response schema, by key: the one table that
``docs/PROTOCOL.md``, the servers and the property tests are checked against."""

from __future__ import annotations

from typing import Final

from edge.protocol import groups, peer_api, sc_api, spu_api
from edge.protocol.messages import ApiKey
from edge.protocol.schema import Api

SCHEMAS: Final[dict[ApiKey, Api]] = {
    **spu_api.APIS,
    **sc_api.APIS,
    **peer_api.APIS,
    **{key: Api(request, response) for key, (request, response) in groups.APIS.items()},
}
