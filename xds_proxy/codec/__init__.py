"""HTTP wire pieces that the downstream side (`http/`) and the upstream side (`upstream/`)
both use: pre-rendered local responses and the date header (`responses`), h2's connection
with a bounded record of closed streams (`h2_connection`), and the HPACK and frame encoding of
the HTTP/2 common path (`h2_fast`). Imports nothing of ours."""
