"""The h2 connection both HTTP/2 sides use (downstream server, upstream pool).

h2 remembers how each closed stream ended so that late frames on it are handled as the RFC
says; by default it keeps 65,536 of them, about 11 MiB per long-lived connection, which showed
as RSS growth under steady HTTP/2 load (issue 10). 1,024 covers the frames still in flight
after a reset; past that, late DATA, WINDOW_UPDATE and RST_STREAM are still ignored and only
late trailers end the connection (measured on h2 4.4).
"""

from __future__ import annotations

import h2.connection


class BoundedH2Connection(h2.connection.H2Connection):
    MAX_CLOSED_STREAMS = 1024
